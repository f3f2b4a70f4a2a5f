//! Which hash partition (shard) PostgreSQL stores a user's read-side rows in, so the list
//! queries can name the owner's partition instead of the partitioned parent.
//!
//! # Why
//!
//! A query on the parent is planned per execution to prune the other partitions (a generic
//! plan would lock all of them at executor start-up), and with 256 shards that planning is
//! most of an uncached list read. A prepared query on one partition is a plain index scan with
//! a cached plan: about half of PostgreSQL's time per read (`docs/query-plans.md`).
//!
//! # Contract
//!
//! - [`hash_partition`] is PostgreSQL's own routing for `PARTITION BY HASH (bigint)`:
//!   `hashint8extended` with the partition seed, combined as `compute_partition_hash_value`
//!   does, modulo the shard count. A test checks it against the server for random keys.
//! - Partition `r` of table `t` is named `t_r` (migration 2 and the rebuild create and swap
//!   them under those names). [`ShardNames::load`] checks every name against the catalog's
//!   partition bounds; when anything differs (another layout, a rebuild of an older version
//!   not yet cleaned up) it returns `None` and the caller queries the parent, which is always
//!   right.
//! - The shard count of a database never changes (`hermet_ensure_shards` refuses another), so
//!   names checked once stay right for the life of the process.

use crate::StoreError;

/// PostgreSQL's `HASH_PARTITION_SEED`.
const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn fin(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// `hash_bytes_uint32_extended` (Bob Jenkins' lookup3, as in PostgreSQL's `hashfn.c`).
fn hash_u32_extended(k: u32, seed: u64) -> u64 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    a = a.wrapping_add(k);
    fin(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hashint8extended`: folds the high half in so equal values of int2/int4/int8 hash alike.
fn hash_i64_extended(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    hash_u32_extended(if v >= 0 { lo ^ hi } else { lo ^ !hi }, seed)
}

/// The remainder of the partition PostgreSQL routes `key` to, for a table
/// `PARTITION BY HASH (bigint column)` with `modulus` partitions of equal modulus.
pub fn hash_partition(key: i64, modulus: u32) -> u32 {
    let h = hash_i64_extended(key, PARTITION_SEED);
    // `hash_combine64(0, h)` for the single key column.
    let row = h.wrapping_add(0x49a0_f4dd_15e5_a8e3);
    (row % u64::from(modulus.max(1))) as u32
}

/// The partition names of one partitioned table, by remainder.
#[derive(Debug, Clone)]
pub struct ShardNames {
    names: Vec<String>,
}

impl ShardNames {
    /// The partitions of `table` when they are exactly `table_0 … table_{n-1}` with bounds
    /// `(MODULUS n, REMAINDER r)`; `None` otherwise (see the module's contract).
    pub async fn load(
        client: &tokio_postgres::Client,
        table: &str,
    ) -> Result<Option<ShardNames>, StoreError> {
        let rows = client
            .query(
                "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
                   FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = to_regclass($1)",
                &[&table],
            )
            .await?;
        let n = rows.len();
        if n == 0 {
            return Ok(None);
        }
        let mut names = vec![String::new(); n];
        for r in &rows {
            let (name, bound): (String, Option<String>) = (r.try_get(0)?, r.try_get(1)?);
            let Some(rem) = name
                .strip_prefix(table)
                .and_then(|s| s.strip_prefix('_'))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return Ok(None);
            };
            let expected = format!("FOR VALUES WITH (modulus {n}, remainder {rem})");
            if rem >= n || bound.as_deref() != Some(expected.as_str()) {
                return Ok(None);
            }
            names[rem] = name;
        }
        Ok(Some(ShardNames { names }))
    }

    pub fn count(&self) -> u32 {
        self.names.len() as u32
    }

    /// The partition holding `key`'s rows.
    pub fn of(&self, key: i64) -> &str {
        &self.names[hash_partition(key, self.count()) as usize]
    }

    /// All names, by remainder.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::hash_partition;

    /// Remainders PostgreSQL 15 gave (`satisfies_hash_partition` on a bigint hash key).
    #[test]
    fn matches_postgres_routing() {
        let cases: [(i64, u32, u32); 11] = [
            (0, 176, 4),
            (1, 184, 5),
            (2, 122, 6),
            (42, 98, 0),
            (-1, 165, 0),
            (-42, 66, 4),
            (100_000, 9, 4),
            (4_294_967_296, 184, 5),
            (-4_294_967_297, 42, 4),
            (i64::MAX, 118, 3),
            (i64::MIN, 127, 0),
        ];
        for (key, r256, r7) in cases {
            assert_eq!(hash_partition(key, 256), r256, "{key} mod 256");
            assert_eq!(hash_partition(key, 7), r7, "{key} mod 7");
        }
    }
}
