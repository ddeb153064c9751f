//! What the PostgreSQL store reads: events, deliveries, attempts, dead letters, pages and counts.

use super::*;

pub(super) async fn event(store: &PgStore, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
    let client = store.pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT body FROM hookrelay_events WHERE id = $1")
        .await?;
    match client.query_opt(&stmt, &[&id]).await? {
        Some(row) => codec::decode_event(row.get::<_, &[u8]>(0)).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn delivery(store: &PgStore, seq: Seq) -> Result<Option<Delivery>, StoreError> {
    Ok(store
        .deliveries_where("seq = $1", &[&(seq as i64)])
        .await?
        .pop())
}

pub(super) async fn deliveries_of(
    store: &PgStore,
    event: uuid::Uuid,
) -> Result<Vec<Delivery>, StoreError> {
    store
        .deliveries_where("event_id = $1 ORDER BY seq", &[&event])
        .await
}

pub(super) async fn attempts(store: &PgStore, seq: Seq) -> Result<Vec<Attempt>, StoreError> {
    let client = store.pool.get().await?;
    let rows = client
        .query(
            "SELECT number, at_ms, latency_ms, status, error, response_excerpt \
             FROM hookrelay_attempts WHERE seq = $1 ORDER BY number",
            &[&(seq as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                number: r.try_get::<_, i32>(0)? as u32,
                at_ms: r.try_get::<_, i64>(1)? as u64,
                latency_ms: r.try_get::<_, i64>(2)? as u64,
                status: r.try_get::<_, Option<i32>>(3)?.map(|s| s as u16),
                error: r.try_get(4)?,
                response_excerpt: r.try_get(5)?,
            })
        })
        .collect()
}

pub(super) async fn dead_letters(
    store: &PgStore,
    target: TargetId,
) -> Result<Vec<Delivery>, StoreError> {
    store
        .deliveries_where(
            "target = $1 AND state = 'dead' ORDER BY updated_ms, seq",
            &[&(target as i32)],
        )
        .await
}

pub(super) async fn stats(store: &PgStore) -> Result<Stats, StoreError> {
    let client = store.pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM hookrelay_events), \
               count(*) FILTER (WHERE state = 'pending'), \
               count(*) FILTER (WHERE state = 'done'), \
               count(*) FILTER (WHERE state = 'dead'), \
               count(*) FILTER (WHERE state = 'skipped') \
             FROM hookrelay_deliveries",
            &[],
        )
        .await?;
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    Ok(Stats {
        events: n(0),
        pending: n(1),
        done: n(2),
        dead: n(3),
        skipped: n(4),
    })
}

pub(super) async fn ping(store: &PgStore) -> Result<(), StoreError> {
    let client = store.pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

pub(super) async fn target_state(
    store: &PgStore,
    target: TargetId,
) -> Result<Option<TargetState>, StoreError> {
    let client = store.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT state FROM hookrelay_targets WHERE id = $1",
            &[&(target as i32)],
        )
        .await?;
    match row.and_then(|r| r.get::<_, Option<String>>(0)) {
        Some(json) => codec::decode_target_state(json.as_bytes()).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn counts(store: &PgStore, target: TargetId) -> Result<TargetCounts, StoreError> {
    let client = store.pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'pending'), \
               count(*) FILTER (WHERE state = 'dead') \
             FROM hookrelay_deliveries WHERE target = $1 AND state IN ('pending', 'dead')",
            &[&(target as i32)],
        )
        .await?;
    Ok(TargetCounts {
        pending: row.get::<_, i64>(0) as u64,
        dead: row.get::<_, i64>(1) as u64,
    })
}

pub(super) async fn oldest_pending_ms(
    store: &PgStore,
    target: TargetId,
) -> Result<Option<u64>, StoreError> {
    let client = store.pool.get().await?;
    let row = client
        .query_one(
            "SELECT min(created_ms) FROM hookrelay_deliveries \
             WHERE target = $1 AND state = 'pending'",
            &[&(target as i32)],
        )
        .await?;
    Ok(row.get::<_, Option<i64>>(0).map(|v| v as u64))
}

pub(super) async fn events_page(
    store: &PgStore,
    after: Option<uuid::Uuid>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let client = store.pool.get().await?;
    let rows = client
        .query(
            "SELECT body FROM hookrelay_events WHERE ($1::uuid IS NULL OR id > $1) \
             ORDER BY id LIMIT $2",
            &[&after, &(limit.min(i64::MAX as usize) as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| codec::decode_event(r.get::<_, &[u8]>(0)))
        .collect()
}

pub(super) async fn event_log(store: &PgStore, query: EventQuery) -> Result<EventPage, StoreError> {
    // Chunks of rows, newest first. A row's body is sent only when its source matches, and
    // the type filter needs the decoded event, so both filters run here; the LIMIT bounds
    // what PostgreSQL looks at. Deliveries come in one query per chunk.
    let mut pager = Pager::new(&query);
    let mut before = query.before;
    loop {
        let chunk = pager.budget().min(256);
        if chunk == 0 || !pager.wants_more() {
            return Ok(pager.finish(false));
        }
        let rows = store
            .pool
            .get()
            .await?
            .query(
                "SELECT id, CASE WHEN $3::text IS NULL OR source = $3 THEN body END \
                 FROM hookrelay_events \
                 WHERE ($1::uuid IS NULL OR id < $1) AND ($2::uuid IS NULL OR id > $2) \
                 ORDER BY id DESC LIMIT $4",
                &[&before, &query.after, &query.source, &(chunk as i64)],
            )
            .await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: uuid::Uuid = row.get(0);
            let event = match row.get::<_, Option<&[u8]>>(1) {
                Some(body) => Some(codec::decode_event(body)?),
                None => None,
            };
            candidates.push((id, event.filter(|e| query.admits_event(e))));
        }
        let ids: Vec<uuid::Uuid> = candidates
            .iter()
            .filter_map(|(id, e)| e.as_ref().map(|_| *id))
            .collect();
        let mut by_event: HashMap<uuid::Uuid, Vec<Delivery>> = HashMap::new();
        if !ids.is_empty() {
            for d in store
                .deliveries_where("event_id = ANY($1) ORDER BY seq", &[&ids])
                .await?
            {
                by_event.entry(d.event_id).or_default().push(d);
            }
        }
        let full_chunk = rows.len() == chunk;
        let n = candidates.len();
        for (i, (id, event)) in candidates.into_iter().enumerate() {
            before = Some(id);
            pager.examine(id);
            if let Some(event) = event {
                let ds = by_event.remove(&id).unwrap_or_default();
                if query.admits_deliveries(&ds) {
                    pager.push(event, ds);
                }
            }
            if !pager.wants_more() {
                return Ok(pager.finish(i + 1 == n && !full_chunk));
            }
        }
        if !full_chunk {
            return Ok(pager.finish(true));
        }
    }
}

pub(super) async fn dead_letters_between(
    store: &PgStore,
    target: TargetId,
    since_ms: u64,
    until_ms: u64,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    store
        .deliveries_where(
            "target = $1 AND state = 'dead' AND updated_ms >= $2 AND updated_ms < $3 \
         ORDER BY updated_ms, seq LIMIT $4",
            &[
                &(target as i32),
                &ms(since_ms),
                &ms(until_ms),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )
        .await
}

impl PgStore {
    pub(super) async fn deliveries_where(
        &self,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Delivery>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM hookrelay_deliveries WHERE {condition}"
            ))
            .await?;
        client
            .query(&stmt, params)
            .await?
            .iter()
            .map(delivery_of)
            .collect()
    }
}
