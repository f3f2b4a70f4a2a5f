//! Throwaway: time sequential store commands on an existing database.
use std::time::Instant;
use hermet_core::projection::ProjectionConfig;
use hermet_core::validate::{Content, Limits, MessageType};
use hermet_store::{Store, StoreConfig, SyncMode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).ok_or("url")?;
    let pool = hermet_store::connect_pool(&url, 2)?;
    let store = Store::new(pool.clone(), StoreConfig { sync_mode: SyncMode::DualWrite, projection: ProjectionConfig::default(), limits: Limits::default() });
    let c = pool.get().await?;
    let rows = c.query("SELECT c.id, m.user_id FROM channels c JOIN channel_members m ON m.channel_id = c.id AND m.role <> 'member' OR (m.channel_id = c.id AND c.channel_type='single' AND m.user_id = c.pair_low) LIMIT 200", &[]).await?;
    drop(c);
    let content = Content::parse("hello there", &Limits::default())?;
    let t = Instant::now();
    let mut n = 0;
    for r in &rows {
        let (ch, u): (i64, i64) = (r.get(0), r.get(1));
        let s = Instant::now();
        store.send_message(u, ch, &content, &MessageType::text()).await?;
        if n < 5 { println!("send {:?}", s.elapsed()); }
        n += 1;
    }
    println!("{} sends in {:?} ({:?}/send)", n, t.elapsed(), t.elapsed() / n);
    let t = Instant::now();
    for r in rows.iter().take(100) {
        let u: i64 = r.get(1);
        store.list_conversations(u, 50, None).await?;
    }
    println!("100 lists in {:?}", t.elapsed());
    Ok(())
}
