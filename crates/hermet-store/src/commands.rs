//! Write-side commands. Each is one transaction that checks authorization against current
//! state, writes the normalized tables, collects the row changes it made and hands them to the
//! sync path before committing (in `dual_write`, the projection runs in the same transaction).
//!
//! Locking: a command that touches a channel's members or messages first locks the channel row
//! (`FOR UPDATE`), so membership changes and sends in one channel are serialized and each sees
//! the other's effect; commands that copy a profile lock the user row `FOR SHARE`.

use deadpool_postgres::Transaction;
use hermet_core::change::{Change, Op, RowChange};
use hermet_core::projection::ReadModels;
use hermet_core::rows::{
    ChannelId, ChannelRow, ChannelType, Fanout, MemberRole, MemberRow, UserId, UserRow,
};
use hermet_core::validate::{Avatar, Invalid, Label, Name, MAX_IDS_PER_CALL};
use hermet_core::Lsn;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::rows::{self, CHANNEL_COLS, FRIEND_COLS, MEMBER_COLS, USER_COLS};
use crate::views::{self, ContactItem, ConversationItem, ListCursor};
use crate::{now_ms, project, Store, StoreError, SyncMode, Written};

pub use crate::history::{MessageItem, MessagePage};

#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    pub nickname: Option<Name>,
    pub avatar: Option<Avatar>,
}

#[derive(Debug, Clone, Default)]
pub struct FriendPatch {
    pub remark_name: Option<Label>,
    pub group_name: Option<Label>,
    pub starred: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct GroupPatch {
    pub name: Option<Name>,
    pub avatar: Option<Avatar>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ConversationPatch {
    pub pinned: Option<bool>,
    pub muted: Option<bool>,
    pub hidden: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: i64,
    pub seq: i64,
    pub created_at: i64,
}

/// Row changes collected by a command.
#[derive(Default)]
pub(crate) struct Changes(Vec<RowChange>);

impl Changes {
    pub(crate) fn push(&mut self, c: RowChange) {
        self.0.push(c);
    }
    pub(crate) fn members(&mut self, rows: Vec<MemberRow>, op: Op) {
        self.0.extend(rows.into_iter().map(|m| {
            RowChange::ChannelMembers(Change {
                op,
                before: None,
                after: Some(m),
            })
        }));
    }
    pub(crate) fn channel_update(&mut self, before: ChannelRow, after: ChannelRow) {
        self.0.push(RowChange::Channels(Change {
            op: Op::Update,
            before: Some(before),
            after: Some(after),
        }));
    }
}

/// Inserts a user row in `tx` (the first step of every way a user is created).
pub(crate) async fn insert_user(
    tx: &deadpool_postgres::Transaction<'_>,
    nickname: &Name,
    avatar: &Avatar,
) -> Result<UserRow, StoreError> {
    let sql = format!(
        "INSERT INTO users (nickname, avatar, created_at, updated_at) VALUES ($1, $2, $3, $3)
         RETURNING {USER_COLS}"
    );
    let row = q_one(tx, &sql, &[&nickname.as_str(), &avatar.as_str(), &now_ms()]).await?;
    rows::user(&row, 0)
}

pub(crate) fn user_not_found(id: UserId) -> StoreError {
    StoreError::not_found("user_not_found", format!("user {id} does not exist"))
}

pub(crate) fn channel_not_found(id: ChannelId) -> StoreError {
    StoreError::not_found("channel_not_found", format!("channel {id} does not exist"))
}

pub(crate) fn not_member() -> StoreError {
    StoreError::forbidden("not_member", "you are not a member of this channel")
}

/// Runs a statement through the connection's statement cache: one round trip instead of two.
pub(crate) async fn q(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query(&stmt, params).await?)
}

pub(crate) async fn q_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&stmt, params).await?)
}

pub(crate) async fn q_one(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query_one(&stmt, params).await?)
}

impl Store {
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool().get().await?)
    }

    /// Hands the changes to the sync path and commits.
    pub(crate) async fn finish(
        &self,
        tx: Transaction<'_>,
        changes: Changes,
    ) -> Result<(), StoreError> {
        let mut applied = project::Applied::default();
        match self.config().sync_mode {
            SyncMode::DualWrite => {
                applied = project::apply_changes(
                    &tx,
                    &changes.0,
                    ReadModels::ALL,
                    &self.config().projection,
                )
                .await?;
            }
            SyncMode::Async => crate::sync::enqueue(&tx, &changes.0).await?,
            // The WAL carries the changes; the relay and the projectors do the rest.
            SyncMode::Cdc => {}
        }
        tx.commit().await?;
        // Before the command is acknowledged, so no reader after the answer gets an older page.
        applied.retire_cached(self.cache().as_ref()).await;
        Ok(())
    }

    /// The WAL position after a command's commit (its `X-Hermet-Lsn`), read after the commit
    /// returned (or, pipelined, run by the server after the `COMMIT`): the *insert* position,
    /// which is past the commit record once the commit returns whatever `synchronous_commit` is. The write position (`pg_current_wal_lsn()`) is not: with
    /// `synchronous_commit = off` a commit returns before its record is written, and a read
    /// waiting for that LSN could be answered before the write is applied.
    pub(crate) const CURRENT_LSN: &'static str = "SELECT pg_current_wal_insert_lsn()::text";

    pub(crate) async fn lsn(conn: &deadpool_postgres::Client) -> Result<Lsn, StoreError> {
        let stmt = conn.prepare_cached(Self::CURRENT_LSN).await?;
        Self::decode_lsn(&conn.query_one(&stmt, &[]).await?)
    }

    /// The answer of [`Self::CURRENT_LSN`].
    pub(crate) fn decode_lsn(row: &Row) -> Result<Lsn, StoreError> {
        Self::decode_lsn_at(row, 0)
    }

    /// An LSN answered as text in column `idx`.
    pub(crate) fn decode_lsn_at(row: &Row, idx: usize) -> Result<Lsn, StoreError> {
        let s: String = rows::get(row, idx)?;
        s.parse().map_err(|e| StoreError::Decode(format!("{e}")))
    }

    pub async fn create_user(
        &self,
        nickname: &Name,
        avatar: &Avatar,
    ) -> Result<Written<UserRow>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let user = insert_user(&tx, nickname, avatar).await?;
        let mut ch = Changes::default();
        ch.push(RowChange::Users(Change::inserted(user.clone())));
        self.finish(tx, ch).await?;
        Ok(Written {
            value: user,
            lsn: Self::lsn(&conn).await?,
        })
    }

    pub async fn get_user(&self, id: UserId) -> Result<UserRow, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = conn
            .query_opt(&sql, &[&id])
            .await?
            .ok_or_else(|| user_not_found(id))?;
        rows::user(&row, 0)
    }

    pub async fn update_profile(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<UserRow>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let sql = format!(
            "UPDATE users SET nickname = COALESCE($2, nickname), avatar = COALESCE($3, avatar),
                    profile_ver = profile_ver + 1, updated_at = $4
              WHERE id = $1 RETURNING {USER_COLS}"
        );
        let nick = patch.nickname.as_ref().map(Name::as_str);
        let avatar = patch.avatar.as_ref().map(Avatar::as_str);
        let row = q_opt(&tx, &sql, &[&id, &nick, &avatar, &now_ms()])
            .await?
            .ok_or_else(|| user_not_found(id))?;
        let user = rows::user(&row, 0)?;
        let mut ch = Changes::default();
        ch.push(RowChange::Users(Change::updated(user.clone())));
        self.finish(tx, ch).await?;
        Ok(Written {
            value: user,
            lsn: Self::lsn(&conn).await?,
        })
    }

    /// Locks the given users `FOR SHARE` (so their profiles cannot change under this command)
    /// and fails on the first that does not exist.
    async fn lock_users(tx: &Transaction<'_>, ids: &[UserId]) -> Result<Vec<UserRow>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE");
        let found = rows::all(&q(tx, &sql, &[&ids]).await?, rows::user)?;
        if let Some(missing) = ids.iter().find(|id| !found.iter().any(|u| u.id == **id)) {
            return Err(user_not_found(*missing));
        }
        Ok(found)
    }

    async fn lock_channel(tx: &Transaction<'_>, id: ChannelId) -> Result<ChannelRow, StoreError> {
        let sql = format!("SELECT {CHANNEL_COLS} FROM channels WHERE id = $1 FOR UPDATE");
        let row = q_opt(tx, &sql, &[&id])
            .await?
            .ok_or_else(|| channel_not_found(id))?;
        rows::channel(&row, 0)
    }

    async fn lock_group(tx: &Transaction<'_>, id: ChannelId) -> Result<ChannelRow, StoreError> {
        let ch = Self::lock_channel(tx, id).await?;
        if ch.channel_type != ChannelType::Group {
            return Err(StoreError::not_found(
                "group_not_found",
                format!("{id} is not a group"),
            ));
        }
        Ok(ch)
    }

    async fn member(
        tx: &Transaction<'_>,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MemberRow>, StoreError> {
        let sql = format!(
            "SELECT {MEMBER_COLS} FROM channel_members WHERE channel_id = $1 AND user_id = $2"
        );
        q_opt(tx, &sql, &[&channel, &user])
            .await?
            .map(|r| rows::member(&r, 0))
            .transpose()
    }

    pub(crate) async fn active_member(
        tx: &Transaction<'_>,
        channel: ChannelId,
        user: UserId,
    ) -> Result<MemberRow, StoreError> {
        match Self::member(tx, channel, user).await? {
            Some(m) if m.is_active() => Ok(m),
            _ => Err(not_member()),
        }
    }

    /// Adds `user`'s members rows (or reopens them if they had left), as plain members whose
    /// read position starts at the channel's last message.
    /// Moves a group's member count by `delta`, and its diffusion with it when the new count
    /// crosses the threshold (with hysteresis, [`Fanout::for_members`]); a flip moves
    /// `fanout_ver`, which makes the projection rewrite every member row in the new shape.
    async fn count_members(
        &self,
        tx: &Transaction<'_>,
        before: &ChannelRow,
        delta: i32,
        now: i64,
    ) -> Result<Row, StoreError> {
        let count = i64::from(before.member_count) + i64::from(delta);
        let fanout = before.fanout.for_members(count, &self.config().fanout);
        let sql = format!(
            "UPDATE channels SET member_count = member_count + $2, updated_at = $3,
                    fanout = $4,
                    fanout_ver = fanout_ver + CASE WHEN fanout = $4 THEN 0 ELSE 1 END
              WHERE id = $1 RETURNING {CHANNEL_COLS}"
        );
        q_one(tx, &sql, &[&before.id, &delta, &now, &fanout.as_str()]).await
    }

    async fn join(
        tx: &Transaction<'_>,
        channel: &ChannelRow,
        users: &[UserId],
        now: i64,
    ) -> Result<Vec<MemberRow>, StoreError> {
        let sql = format!(
            "INSERT INTO channel_members (channel_id, user_id, role, joined_at, read_seq)
             SELECT $1, u, 'member', $3, $4 FROM UNNEST($2::bigint[]) AS u
             ON CONFLICT (channel_id, user_id) DO UPDATE SET
                 role = 'member', joined_at = excluded.joined_at, left_at = NULL, left_seq = NULL,
                 read_seq = GREATEST(channel_members.read_seq, excluded.read_seq),
                 hidden_at_seq = NULL, settings_ver = channel_members.settings_ver + 1
             WHERE channel_members.left_at IS NOT NULL
             RETURNING {MEMBER_COLS}"
        );
        rows::all(
            &q(tx, &sql, &[&channel.id, &users, &now, &channel.last_seq]).await?,
            rows::member,
        )
    }

    pub async fn add_friend(
        &self,
        user: UserId,
        friend: UserId,
    ) -> Result<Written<ChannelId>, StoreError> {
        if user == friend {
            return Err(Invalid::new("friend_id", "you cannot add yourself as a friend").into());
        }
        let (lo, hi) = (user.min(friend), user.max(friend));
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let now = now_ms();
        Self::lock_users(&tx, &[lo, hi]).await?;
        let mut ch = Changes::default();
        let insert = format!(
            "INSERT INTO channels (channel_type, creator_id, member_count, pair_low, pair_high,
                                   created_at, updated_at)
             VALUES ('single', $1, 2, $2, $3, $4, $4)
             ON CONFLICT (pair_low, pair_high) WHERE channel_type = 'single' DO NOTHING
             RETURNING {CHANNEL_COLS}"
        );
        let channel = match q_opt(&tx, &insert, &[&user, &lo, &hi, &now]).await? {
            Some(row) => {
                let c = rows::channel(&row, 0)?;
                ch.push(RowChange::Channels(Change::inserted(c.clone())));
                c
            }
            None => {
                let sql = format!(
                    "SELECT {CHANNEL_COLS} FROM channels
                      WHERE channel_type = 'single' AND pair_low = $1 AND pair_high = $2 FOR UPDATE"
                );
                let row = q_one(&tx, &sql, &[&lo, &hi]).await?;
                rows::channel(&row, 0)?
            }
        };
        let active = q_opt(
            &tx,
            "SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2 AND status = 'active'",
            &[&user, &friend],
        )
        .await?;
        if active.is_some() {
            return Err(StoreError::conflict(
                "already_friends",
                "you are already friends",
            ));
        }
        let sql = format!(
            "INSERT INTO friendships (user_id, friend_id, status, created_at)
             VALUES ($1, $2, 'active', $3), ($2, $1, 'active', $3)
             ON CONFLICT (user_id, friend_id) DO UPDATE SET
                 status = 'active', deleted_at = NULL, remark_name = '', group_name = '',
                 starred = false, ver = friendships.ver + 1, created_at = excluded.created_at
             RETURNING {FRIEND_COLS}"
        );
        for f in rows::all(
            &q(&tx, &sql, &[&user, &friend, &now]).await?,
            rows::friendship,
        )? {
            ch.push(RowChange::Friendships(Change::inserted(f)));
        }
        let joined = Self::join(&tx, &channel, &[lo, hi], now).await?;
        ch.members(joined, Op::Insert);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: channel.id,
            lsn: Self::lsn(&conn).await?,
        })
    }

    pub async fn delete_friend(
        &self,
        user: UserId,
        friend: UserId,
    ) -> Result<Written<()>, StoreError> {
        let not_friends = || StoreError::not_found("not_friends", "you are not friends");
        let (lo, hi) = (user.min(friend), user.max(friend));
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let now = now_ms();
        let sql = format!(
            "SELECT {CHANNEL_COLS} FROM channels
              WHERE channel_type = 'single' AND pair_low = $1 AND pair_high = $2 FOR UPDATE"
        );
        let channel = match q_opt(&tx, &sql, &[&lo, &hi]).await? {
            Some(row) => rows::channel(&row, 0)?,
            None => return Err(not_friends()),
        };
        let sql = format!(
            "UPDATE friendships SET status = 'deleted', deleted_at = $3, ver = ver + 1
              WHERE ((user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1))
                AND status = 'active'
             RETURNING {FRIEND_COLS}"
        );
        let ended = rows::all(
            &q(&tx, &sql, &[&user, &friend, &now]).await?,
            rows::friendship,
        )?;
        if ended.is_empty() {
            return Err(not_friends());
        }
        let mut ch = Changes::default();
        for f in ended {
            ch.push(RowChange::Friendships(Change::updated(f)));
        }
        let sql = format!(
            "UPDATE channel_members SET left_at = $2, left_seq = $3, settings_ver = settings_ver + 1
              WHERE channel_id = $1 AND left_at IS NULL
             RETURNING {MEMBER_COLS}"
        );
        let closed = rows::all(
            &q(&tx, &sql, &[&channel.id, &now, &channel.last_seq]).await?,
            rows::member,
        )?;
        ch.members(closed, Op::Update);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    pub async fn update_friend(
        &self,
        user: UserId,
        friend: UserId,
        patch: &FriendPatch,
    ) -> Result<Written<()>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let sql = format!(
            "UPDATE friendships SET remark_name = COALESCE($3, remark_name),
                    group_name = COALESCE($4, group_name), starred = COALESCE($5, starred),
                    ver = ver + 1
              WHERE user_id = $1 AND friend_id = $2 AND status = 'active'
             RETURNING {FRIEND_COLS}"
        );
        let remark = patch.remark_name.as_ref().map(Label::as_str);
        let group = patch.group_name.as_ref().map(Label::as_str);
        let row = q_opt(
            &tx,
            &sql,
            &[&user, &friend, &remark, &group, &patch.starred],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("not_friends", "you are not friends"))?;
        let mut ch = Changes::default();
        ch.push(RowChange::Friendships(Change::updated(rows::friendship(
            &row, 0,
        )?)));
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    pub async fn create_group(
        &self,
        owner: UserId,
        name: &Name,
        avatar: &Avatar,
        member_ids: &[UserId],
    ) -> Result<Written<ChannelId>, StoreError> {
        let mut others: Vec<UserId> = member_ids.iter().copied().filter(|&m| m != owner).collect();
        others.sort_unstable();
        others.dedup();
        let max = self.config().limits.max_group_members;
        if others.len() + 1 > max {
            return Err(Invalid::new(
                "member_ids",
                format!("a group has at most {max} members, the owner included"),
            )
            .into());
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let now = now_ms();
        let mut everyone = others.clone();
        everyone.push(owner);
        everyone.sort_unstable();
        Self::lock_users(&tx, &everyone).await?;
        let count = i32::try_from(everyone.len()).unwrap_or(i32::MAX);
        let fanout = Fanout::Write.for_members(count.into(), &self.config().fanout);
        let sql = format!(
            "INSERT INTO channels (channel_type, name, avatar, creator_id, member_count,
                                   created_at, updated_at, fanout)
             VALUES ('group', $1, $2, $3, $4, $5, $5, $6)
             RETURNING {CHANNEL_COLS}"
        );
        let row = q_one(
            &tx,
            &sql,
            &[
                &name.as_str(),
                &avatar.as_str(),
                &owner,
                &count,
                &now,
                &fanout.as_str(),
            ],
        )
        .await?;
        let channel = rows::channel(&row, 0)?;
        let sql = format!(
            "INSERT INTO channel_members (channel_id, user_id, role, joined_at)
             SELECT $1, u, CASE WHEN u = $3 THEN 'owner' ELSE 'member' END, $4
               FROM UNNEST($2::bigint[]) AS u
             RETURNING {MEMBER_COLS}"
        );
        let members = rows::all(
            &q(&tx, &sql, &[&channel.id, &everyone, &owner, &now]).await?,
            rows::member,
        )?;
        let mut ch = Changes::default();
        ch.push(RowChange::Channels(Change::inserted(channel.clone())));
        ch.members(members, Op::Insert);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: channel.id,
            lsn: Self::lsn(&conn).await?,
        })
    }

    pub async fn update_group(
        &self,
        actor: UserId,
        channel_id: ChannelId,
        patch: &GroupPatch,
    ) -> Result<Written<()>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let before = Self::lock_group(&tx, channel_id).await?;
        let me = Self::active_member(&tx, channel_id, actor).await?;
        if me.role != MemberRole::Owner {
            return Err(StoreError::forbidden(
                "not_owner",
                "only the group owner may do this",
            ));
        }
        let sql = format!(
            "UPDATE channels SET name = COALESCE($2, name), avatar = COALESCE($3, avatar),
                    channel_info_ver = channel_info_ver + 1, updated_at = $4
              WHERE id = $1 RETURNING {CHANNEL_COLS}"
        );
        let name = patch.name.as_ref().map(Name::as_str);
        let avatar = patch.avatar.as_ref().map(Avatar::as_str);
        let row = q_one(&tx, &sql, &[&channel_id, &name, &avatar, &now_ms()]).await?;
        let mut ch = Changes::default();
        ch.channel_update(before, rows::channel(&row, 0)?);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    /// Adds users to a group; those already in it are left as they are.
    pub async fn add_members(
        &self,
        actor: UserId,
        channel_id: ChannelId,
        user_ids: &[UserId],
    ) -> Result<Written<()>, StoreError> {
        let mut ids = user_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Err(Invalid::new("user_ids", "must name at least one user").into());
        }
        if ids.len() > MAX_IDS_PER_CALL {
            return Err(Invalid::new(
                "user_ids",
                format!("at most {MAX_IDS_PER_CALL} ids per call"),
            )
            .into());
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let now = now_ms();
        let before = Self::lock_group(&tx, channel_id).await?;
        Self::active_member(&tx, channel_id, actor).await?;
        // The size limit first: a request over it is refused as such, whoever it names.
        let already: i64 = q_one(
            &tx,
            "SELECT count(*) FROM channel_members
                  WHERE channel_id = $1 AND user_id = ANY($2) AND left_at IS NULL",
            &[&channel_id, &ids],
        )
        .await?
        .get(0);
        let max = self.config().limits.max_group_members;
        let after = before.member_count as usize + ids.len() - already as usize;
        if after > max {
            return Err(Invalid::new(
                "user_ids",
                format!("a group has at most {max} members, the owner included"),
            )
            .into());
        }
        Self::lock_users(&tx, &ids).await?;
        let joined = Self::join(&tx, &before, &ids, now).await?;
        let mut ch = Changes::default();
        if !joined.is_empty() {
            let n = joined.len() as i32;
            let row = self.count_members(&tx, &before, n, now).await?;
            ch.channel_update(before, rows::channel(&row, 0)?);
            ch.members(joined, Op::Insert);
        }
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    /// Removes `target` from a group (`target == actor` is leaving). An owner who leaves hands
    /// ownership to the longest-standing member.
    pub async fn remove_member(
        &self,
        actor: UserId,
        channel_id: ChannelId,
        target: UserId,
    ) -> Result<Written<()>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let now = now_ms();
        let before = Self::lock_group(&tx, channel_id).await?;
        let me = Self::active_member(&tx, channel_id, actor).await?;
        let victim = if target == actor {
            me
        } else {
            if me.role != MemberRole::Owner {
                return Err(StoreError::forbidden(
                    "not_owner",
                    "only the group owner may remove others",
                ));
            }
            match Self::member(&tx, channel_id, target).await? {
                Some(m) if m.is_active() => m,
                _ => {
                    return Err(StoreError::not_found(
                        "member_not_found",
                        format!("user {target} is not a member of this group"),
                    ))
                }
            }
        };
        let sql = format!(
            "UPDATE channel_members SET left_at = $3, left_seq = $4, role = 'member',
                    settings_ver = settings_ver + 1
              WHERE channel_id = $1 AND user_id = $2
             RETURNING {MEMBER_COLS}"
        );
        let left = rows::all(
            &q(&tx, &sql, &[&channel_id, &target, &now, &before.last_seq]).await?,
            rows::member,
        )?;
        let mut ch = Changes::default();
        ch.members(left, Op::Update);
        if victim.role == MemberRole::Owner {
            let sql = format!(
                "UPDATE channel_members SET role = 'owner', settings_ver = settings_ver + 1
                  WHERE (channel_id, user_id) = (
                        SELECT channel_id, user_id FROM channel_members
                         WHERE channel_id = $1 AND left_at IS NULL
                         ORDER BY joined_at, user_id LIMIT 1)
                 RETURNING {MEMBER_COLS}"
            );
            let heir = rows::all(&q(&tx, &sql, &[&channel_id]).await?, rows::member)?;
            ch.members(heir, Op::Update);
        }
        let row = self.count_members(&tx, &before, -1, now).await?;
        ch.channel_update(before, rows::channel(&row, 0)?);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    /// Moves the read position forward to `seq` (never backwards; `0` is a no-op).
    pub async fn mark_read(
        &self,
        reader: UserId,
        channel_id: ChannelId,
        seq: i64,
    ) -> Result<Written<()>, StoreError> {
        if seq < 0 {
            return Err(Invalid::new("seq", "must not be negative").into());
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let last: i64 = q_opt(
            &tx,
            "SELECT last_seq FROM channels WHERE id = $1",
            &[&channel_id],
        )
        .await?
        .ok_or_else(|| channel_not_found(channel_id))?
        .get(0);
        Self::active_member(&tx, channel_id, reader).await?;
        if seq > last {
            return Err(Invalid::new(
                "seq",
                format!("is beyond the last message of the channel ({last})"),
            )
            .into());
        }
        let sql = format!(
            "UPDATE channel_members SET read_seq = $3
              WHERE channel_id = $1 AND user_id = $2 AND read_seq < $3
             RETURNING {MEMBER_COLS}"
        );
        let moved = rows::all(
            &q(&tx, &sql, &[&channel_id, &reader, &seq]).await?,
            rows::member,
        )?;
        let mut ch = Changes::default();
        ch.members(moved, Op::Update);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    /// Pins, mutes or hides a conversation. Hiding lasts until the next message.
    pub async fn update_conversation(
        &self,
        user: UserId,
        channel_id: ChannelId,
        patch: ConversationPatch,
    ) -> Result<Written<()>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let sql = format!("SELECT {CHANNEL_COLS} FROM channels WHERE id = $1 FOR SHARE");
        let channel = rows::channel(
            &q_opt(&tx, &sql, &[&channel_id])
                .await?
                .ok_or_else(|| channel_not_found(channel_id))?,
            0,
        )?;
        Self::active_member(&tx, channel_id, user).await?;
        let sql = format!(
            "UPDATE channel_members SET pinned = COALESCE($3, pinned), muted = COALESCE($4, muted),
                    hidden_at_seq = CASE WHEN $5::bool IS NULL THEN hidden_at_seq
                                         WHEN $5 THEN $6::bigint ELSE NULL END,
                    settings_ver = settings_ver + 1
              WHERE channel_id = $1 AND user_id = $2
             RETURNING {MEMBER_COLS}"
        );
        let rows_ = q(
            &tx,
            &sql,
            &[
                &channel_id,
                &user,
                &patch.pinned,
                &patch.muted,
                &patch.hidden,
                &channel.last_seq,
            ],
        )
        .await?;
        let mut ch = Changes::default();
        ch.members(rows::all(&rows_, rows::member)?, Op::Update);
        self.finish(tx, ch).await?;
        Ok(Written {
            value: (),
            lsn: Self::lsn(&conn).await?,
        })
    }

    pub async fn list_conversations(
        &self,
        user: UserId,
        limit: i64,
        after: Option<ListCursor>,
    ) -> Result<Vec<ConversationItem>, StoreError> {
        let conn = self.read_pool().get().await?;
        let queries = self.list_queries(&conn).await?;
        views::list_conversations(&conn, queries, user, limit, after).await
    }

    /// The channels in read diffusion among `user`'s open conversations: what a cached first
    /// page of their list must be checked against (`hermet_core::cache`).
    pub async fn read_fanout_channels(&self, user: UserId) -> Result<Vec<ChannelId>, StoreError> {
        let conn = self.read_pool().get().await?;
        views::read_fanout_channels(&conn, user).await
    }

    pub async fn list_contacts(
        &self,
        user: UserId,
        limit: i64,
    ) -> Result<Vec<ContactItem>, StoreError> {
        let conn = self.read_pool().get().await?;
        let queries = self.list_queries(&conn).await?;
        views::list_contacts(&conn, queries, user, limit).await
    }
}
