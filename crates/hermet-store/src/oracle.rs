//! The rebuild oracle: the whole read side recomputed from the write side in SQL, independent
//! of the projection code, and a diff of the live read side against it.
//!
//! Every view column is compared except bookkeeping (`updated_at`); the version columns are
//! compared too, so a row that looks right but carries a wrong guard is caught.

use tokio_postgres::Client;

use crate::StoreError;

/// Expected `user_conversation_view` rows. `$1` is the preview length in characters.
pub const EXPECTED_CONVERSATIONS: &str = "
SELECT m.user_id, m.channel_id, s.fanout, c.fanout_ver, c.channel_type AS conversation_type,
       CASE WHEN c.channel_type = 'single' THEN COALESCE(NULLIF(f.remark_name, ''), p.nickname)
            WHEN s.fanout = 'read' THEN ''
            ELSE c.name END AS conversation_name,
       CASE WHEN c.channel_type = 'single' THEN p.avatar
            WHEN s.fanout = 'read' THEN ''
            ELSE c.avatar END AS conversation_avatar,
       CASE WHEN c.channel_type = 'single' THEN p.profile_ver
            WHEN s.fanout = 'read' THEN 0
            ELSE c.channel_info_ver END AS conversation_info_ver,
       CASE WHEN s.fanout = 'read' THEN 0 ELSE c.channel_info_ver END AS channel_info_ver,
       p.id AS peer_user_id, p.nickname AS peer_nickname, p.avatar AS peer_avatar,
       COALESCE(p.profile_ver, 0) AS peer_profile_ver,
       COALESCE(f.remark_name, '') AS remark_name, COALESCE(f.ver, 0) AS remark_ver,
       lm.id AS last_message_id, COALESCE(lm.seq, 0) AS last_message_seq,
       lm.msg_type AS last_message_type, left(lm.content, $1) AS last_message_content,
       lm.sender_id AS last_message_sender_id, lm.sender_name AS last_message_sender_name,
       lm.created_at AS last_message_time,
       m.read_seq, GREATEST(COALESCE(lm.seq, 0) - m.read_seq, 0) AS unread_count,
       m.pinned AS is_pinned, m.muted AS is_muted, m.hidden_at_seq,
       (m.hidden_at_seq IS NOT NULL AND COALESCE(lm.seq, 0) <= m.hidden_at_seq) AS is_hidden,
       m.joined_at AS opened_at, COALESCE(m.left_at, 0) AS closed_at, m.settings_ver
  FROM channel_members m
  JOIN channels c ON c.id = m.channel_id
  CROSS JOIN LATERAL (SELECT CASE WHEN c.channel_type = 'group' THEN c.fanout ELSE 'write' END
                             AS fanout) s
  LEFT JOIN users p ON c.channel_type = 'single'
                   AND p.id = CASE WHEN c.pair_low = m.user_id THEN c.pair_high ELSE c.pair_low END
  LEFT JOIN friendships f ON c.channel_type = 'single' AND f.user_id = m.user_id AND f.friend_id = p.id
  LEFT JOIN messages lm ON s.fanout = 'write' AND lm.channel_id = c.id
                       AND lm.seq = CASE WHEN m.left_at IS NULL THEN c.last_seq
                                         ELSE LEAST(m.left_seq, c.last_seq) END";

/// The columns of `user_conversation_view` that are not derived from others
/// ([`crate::views::DERIVED_CONVERSATION_COLUMNS`]), from the same joins as
/// [`EXPECTED_CONVERSATIONS`], in the order of [`STORED_CONVERSATION_COLUMNS`]: what the online
/// rebuild inserts, with the derived columns computed the way every writer computes them. `$1`
/// is the preview length. Group names and avatars are stored for groups in write diffusion only
/// (a single chat shows its peer; a group in read diffusion, its `channel_view` row). Rebuilding
/// and then diffing against [`EXPECTED_CONVERSATIONS`] checks that the two agree.
pub const BUILD_CONVERSATIONS: &str = "
SELECT m.user_id, m.channel_id, s.fanout, c.fanout_ver, c.channel_type AS conversation_type,
       CASE WHEN c.channel_type = 'group' AND s.fanout = 'write' THEN c.name ELSE '' END
           AS channel_name,
       CASE WHEN c.channel_type = 'group' AND s.fanout = 'write' THEN c.avatar ELSE '' END
           AS channel_avatar,
       CASE WHEN s.fanout = 'read' THEN 0 ELSE c.channel_info_ver END AS channel_info_ver,
       p.id AS peer_user_id, p.nickname AS peer_nickname, p.avatar AS peer_avatar,
       COALESCE(p.profile_ver, 0) AS peer_profile_ver,
       COALESCE(f.remark_name, '') AS remark_name, COALESCE(f.ver, 0) AS remark_ver,
       lm.id AS last_message_id, COALESCE(lm.seq, 0) AS last_message_seq,
       lm.msg_type AS last_message_type, left(lm.content, $1) AS last_message_content,
       lm.sender_id AS last_message_sender_id, lm.sender_name AS last_message_sender_name,
       lm.created_at AS last_message_time,
       m.read_seq, m.pinned AS is_pinned, m.muted AS is_muted, m.hidden_at_seq,
       m.joined_at AS opened_at, COALESCE(m.left_at, 0) AS closed_at, m.settings_ver
  FROM channel_members m
  JOIN channels c ON c.id = m.channel_id
  CROSS JOIN LATERAL (SELECT CASE WHEN c.channel_type = 'group' THEN c.fanout ELSE 'write' END
                             AS fanout) s
  LEFT JOIN users p ON c.channel_type = 'single'
                   AND p.id = CASE WHEN c.pair_low = m.user_id THEN c.pair_high ELSE c.pair_low END
  LEFT JOIN friendships f ON c.channel_type = 'single' AND f.user_id = m.user_id AND f.friend_id = p.id
  LEFT JOIN messages lm ON s.fanout = 'write' AND lm.channel_id = c.id
                       AND lm.seq = CASE WHEN m.left_at IS NULL THEN c.last_seq
                                         ELSE LEAST(m.left_seq, c.last_seq) END";

/// Expected `channel_view` rows: one per group, whatever its diffusion, with the message at its
/// `last_seq`. `$1` is the preview length.
pub const EXPECTED_CHANNELS: &str = "
SELECT c.id AS channel_id, c.name AS channel_name, c.avatar AS channel_avatar, c.channel_info_ver,
       lm.id AS last_message_id, COALESCE(lm.seq, 0) AS last_message_seq,
       lm.msg_type AS last_message_type, left(lm.content, $1) AS last_message_content,
       lm.sender_id AS last_message_sender_id, lm.sender_name AS last_message_sender_name,
       lm.created_at AS last_message_time
  FROM channels c
  LEFT JOIN messages lm ON lm.channel_id = c.id AND lm.seq = c.last_seq
 WHERE c.channel_type = 'group'";

/// Columns of [`EXPECTED_CHANNELS`], all stored (without `updated_at`).
pub const STORED_CHANNEL_COLUMNS: &str = "channel_id, channel_name, channel_avatar, \
channel_info_ver, last_message_id, last_message_seq, last_message_type, last_message_content, \
last_message_sender_id, last_message_sender_name, last_message_time";

pub const ACTUAL_CHANNELS: &str = "
SELECT channel_id, channel_name, channel_avatar, channel_info_ver, last_message_id,
       last_message_seq, last_message_type, last_message_content, last_message_sender_id,
       last_message_sender_name, last_message_time
  FROM channel_view";

/// Columns of [`BUILD_CONVERSATIONS`] (without the derived ones and `updated_at`).
pub const STORED_CONVERSATION_COLUMNS: &str = "user_id, channel_id, fanout, fanout_ver, \
conversation_type, \
channel_name, channel_avatar, channel_info_ver, peer_user_id, peer_nickname, peer_avatar, \
peer_profile_ver, remark_name, remark_ver, last_message_id, last_message_seq, last_message_type, \
last_message_content, last_message_sender_id, last_message_sender_name, last_message_time, \
read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver";

/// Columns of [`EXPECTED_CONTACTS`], all stored (without `updated_at`).
pub const STORED_CONTACT_COLUMNS: &str = "user_id, contact_id, contact_nickname, contact_avatar, \
contact_info_ver, remark_name, group_name, is_starred, deleted_at, friendship_ver";

/// The same columns from the live view.
pub const ACTUAL_CONVERSATIONS: &str = "
SELECT user_id, channel_id, fanout, fanout_ver, conversation_type, conversation_name,
       conversation_avatar, conversation_info_ver, channel_info_ver, peer_user_id, peer_nickname, peer_avatar,
       peer_profile_ver, remark_name, remark_ver, last_message_id, last_message_seq,
       last_message_type, last_message_content, last_message_sender_id, last_message_sender_name,
       last_message_time, read_seq, unread_count, is_pinned, is_muted, hidden_at_seq, is_hidden,
       opened_at, closed_at, settings_ver
  FROM user_conversation_view";

pub const EXPECTED_CONTACTS: &str = "
SELECT f.user_id, f.friend_id AS contact_id, u.nickname AS contact_nickname,
       u.avatar AS contact_avatar, u.profile_ver AS contact_info_ver, f.remark_name, f.group_name,
       f.starred AS is_starred, COALESCE(f.deleted_at, 0) AS deleted_at, f.ver AS friendship_ver
  FROM friendships f JOIN users u ON u.id = f.friend_id";

pub const ACTUAL_CONTACTS: &str = "
SELECT user_id, contact_id, contact_nickname, contact_avatar, contact_info_ver, remark_name,
       group_name, is_starred, deleted_at, friendship_ver
  FROM user_contact_view";

pub const EXPECTED_CONVERSATION_REFS: &str = "
SELECT CASE WHEN c.pair_low = m.user_id THEN c.pair_high ELSE c.pair_low END AS peer_user_id,
       m.user_id AS owner_user_id, m.channel_id
  FROM channel_members m JOIN channels c ON c.id = m.channel_id
 WHERE c.channel_type = 'single'";

pub const ACTUAL_CONVERSATION_REFS: &str =
    "SELECT peer_user_id, owner_user_id, channel_id FROM conversation_reverse_index";

pub const EXPECTED_CONTACT_REFS: &str =
    "SELECT friend_id AS contact_user_id, user_id AS owner_user_id FROM friendships";

pub const ACTUAL_CONTACT_REFS: &str =
    "SELECT contact_user_id, owner_user_id FROM contact_reverse_index";

/// One differing row: `missing` (expected, not in the read side) or `extra` (in the read side,
/// not expected), as JSON for readable reports. A row whose fields differ shows up as both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub table: &'static str,
    pub kind: &'static str,
    pub row: String,
}

/// Compares the whole read side with the oracle.
pub async fn diff(client: &Client, preview_chars: i32) -> Result<Vec<Mismatch>, StoreError> {
    let pairs: [(&'static str, &str, &str, bool); 5] = [
        (
            "user_conversation_view",
            EXPECTED_CONVERSATIONS,
            ACTUAL_CONVERSATIONS,
            true,
        ),
        ("channel_view", EXPECTED_CHANNELS, ACTUAL_CHANNELS, true),
        (
            "user_contact_view",
            EXPECTED_CONTACTS,
            ACTUAL_CONTACTS,
            false,
        ),
        (
            "conversation_reverse_index",
            EXPECTED_CONVERSATION_REFS,
            ACTUAL_CONVERSATION_REFS,
            false,
        ),
        (
            "contact_reverse_index",
            EXPECTED_CONTACT_REFS,
            ACTUAL_CONTACT_REFS,
            false,
        ),
    ];
    let mut out = Vec::new();
    for (table, expected, actual, takes_preview) in pairs {
        // The two sides are compared as whole rows; EXCEPT treats NULLs as equal.
        let sql = format!(
            "WITH e AS ({expected}), a AS ({actual})
             SELECT 'missing', row_to_json(x)::text FROM (SELECT * FROM e EXCEPT ALL SELECT * FROM a) x
             UNION ALL
             SELECT 'extra', row_to_json(y)::text FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM e) y"
        );
        let rows = if takes_preview {
            client.query(&sql, &[&preview_chars]).await?
        } else {
            client.query(&sql, &[]).await?
        };
        for r in rows {
            let kind: String = r.get(0);
            out.push(Mismatch {
                table,
                kind: if kind == "missing" {
                    "missing"
                } else {
                    "extra"
                },
                row: r.get(1),
            });
        }
    }
    Ok(out)
}
