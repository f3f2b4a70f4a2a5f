//! A large write side seeded set-based (`generate_series`), not through commands: a million
//! view rows' worth in seconds, for the recovery tests and `hermet-bench rebuild`.
//!
//! [`write_side`] inserts `users` users, each befriending the next `pairs_per_user` users (one
//! single chat and two friendship rows per pair, one message per chat), and `groups` groups of
//! [`GROUP_SIZE`] members with one message each; the serial sequences are moved past the ids it
//! used, and the tables analyzed. The read side is left empty: a rebuild (or an audit's repair)
//! computes it.

/// Members of each seeded group.
pub const GROUP_SIZE: i64 = 20;

/// Seeds the write side of a migrated, empty database. Returns the write-side rows inserted.
pub async fn write_side(
    client: &tokio_postgres::Client,
    users: i64,
    pairs_per_user: i64,
    groups: i64,
) -> Result<u64, tokio_postgres::Error> {
    let mut rows = 0;
    let steps: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]); 9] = [
        (
            "INSERT INTO users (id, nickname, avatar, profile_ver, created_at, updated_at)
             SELECT i, 'user ' || i, 'https://a.example/' || i, 1, 0, 0
               FROM generate_series(1, $1::bigint) i",
            &[&users],
        ),
        // Pairs (i, i+k mod n), k = 1..K: distinct unordered pairs while K < n / 2.
        (
            "INSERT INTO channels (id, channel_type, channel_info_ver, member_count, creator_id,
                                   last_seq, pair_low, pair_high, created_at, updated_at)
             SELECT row_number() OVER (ORDER BY a, b), 'single', 1, 2, LEAST(a, b), 1,
                    LEAST(a, b), GREATEST(a, b), 0, 0
               FROM (SELECT i AS a, ((i - 1 + k) % $1::bigint) + 1 AS b
                       FROM generate_series(1, $1::bigint) i, generate_series(1, $2::bigint) k) p",
            &[&users, &pairs_per_user],
        ),
        (
            "INSERT INTO channel_members (channel_id, user_id, joined_at, read_seq)
             SELECT id, pair_low, id, 1 FROM channels WHERE channel_type = 'single'
             UNION ALL
             SELECT id, pair_high, id, 0 FROM channels WHERE channel_type = 'single'",
            &[],
        ),
        (
            "INSERT INTO friendships (user_id, friend_id, remark_name, status, created_at)
             SELECT pair_low, pair_high, CASE WHEN id % 7 = 0 THEN 'remark ' || id ELSE '' END,
                    'active', 0
               FROM channels WHERE channel_type = 'single'
             UNION ALL
             SELECT pair_high, pair_low, '', 'active', 0 FROM channels WHERE channel_type = 'single'",
            &[],
        ),
        (
            "INSERT INTO channels (id, channel_type, name, channel_info_ver, member_count,
                                   creator_id, last_seq, created_at, updated_at)
             SELECT m.base + g, 'group', 'group ' || g, 1, $3::bigint, ((g * 7) % $1::bigint) + 1,
                    1, 0, 0
               FROM (SELECT COALESCE(max(id), 0) AS base FROM channels) m,
                    generate_series(1, $2::bigint) g",
            &[&users, &groups, &GROUP_SIZE],
        ),
        // Member j of group g: user (7g + 13j) mod n + 1, distinct for j < 20 when n > 260.
        (
            "INSERT INTO channel_members (channel_id, user_id, role, joined_at, read_seq)
             SELECT c.id, ((c.creator_id - 1 + j * 13) % $1::bigint) + 1,
                    CASE WHEN j = 0 THEN 'owner' ELSE 'member' END, c.id, 0
               FROM channels c, generate_series(0, $2::bigint - 1) j
              WHERE c.channel_type = 'group'",
            &[&users, &GROUP_SIZE],
        ),
        (
            "INSERT INTO messages (channel_id, seq, sender_id, sender_name, msg_type, content,
                                   created_at)
             SELECT c.id, 1, c.creator_id, 'user ' || c.creator_id, 'text',
                    'hello from ' || c.creator_id || ' in channel ' || c.id, 1000 + c.id
               FROM channels c",
            &[],
        ),
        (
            "SELECT setval(pg_get_serial_sequence('users', 'id'), GREATEST(max(id), 1)) FROM users",
            &[],
        ),
        (
            "SELECT setval(pg_get_serial_sequence('channels', 'id'), GREATEST(max(id), 1))
               FROM channels",
            &[],
        ),
    ];
    for (sql, params) in steps {
        rows += client.execute(sql, params).await?;
    }
    client
        .batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'), GREATEST(max(id), 1))
               FROM messages;
             ANALYZE {}",
            hermet_core::rows::WRITE_TABLES.join(", ")
        ))
        .await?;
    Ok(rows)
}
