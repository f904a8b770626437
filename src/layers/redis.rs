//! An application's Redis cache as a layer. The convention (README, "Other
//! layers"): when the application caches a value under a key, it also adds
//! the key to the set `PREFIX tag:TAG` for every tag the value depends on,
//! and to `PREFIX url:URL` for the page URL it renders, if any (`SADD`).
//! An invalidation of a tag or URL deletes every key of its set and the set
//! itself, in one script so a concurrent `SADD` is not lost half-way. Redis
//! has no stale values: soft invalidations delete as hard ones do. Prefix
//! selectors and a purge of everything have no set and are reported as
//! skipped.

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::{Delivery, Layer};
use crate::invalidation::{Mode, Selector};

/// Deletes the members of every set in KEYS, then the sets; returns how
/// many keys it deleted. `unpack` is bounded by Lua's stack, so in chunks.
const DELETE_SETS: &str = r"
local n = 0
for _, set in ipairs(KEYS) do
  local members = redis.call('SMEMBERS', set)
  for i = 1, #members, 1000 do
    n = n + redis.call('DEL', unpack(members, i, math.min(i + 999, #members)))
  end
  redis.call('DEL', set)
end
return n
";

pub(crate) struct Redis {
    client: redis::Client,
    prefix: String,
    /// The connection, made on first use and again after a failure.
    connection: Mutex<Option<MultiplexedConnection>>,
    script: redis::Script,
}

impl Redis {
    pub(crate) fn new(url: &str, prefix: &str) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("layer url {url:?}: {e}"))?;
        Ok(Redis {
            client,
            prefix: prefix.to_string(),
            connection: Mutex::new(None),
            script: redis::Script::new(DELETE_SETS),
        })
    }

    async fn delete(&self, sets: Vec<String>) -> Result<i64, String> {
        let mut slot = self.connection.lock().await;
        let connection = match slot.as_mut() {
            Some(c) => c,
            None => {
                let c = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    self.client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| "Redis did not answer within 5 s".to_string())?
                .map_err(|e| format!("cannot reach Redis: {e}"))?;
                slot.insert(c)
            }
        };
        let mut call = self.script.prepare_invoke();
        for set in &sets {
            call.key(set);
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), call.invoke_async::<i64>(connection)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => {
                *slot = None;
                Err(format!("Redis refused the deletion: {e}"))
            }
            Err(_) => {
                *slot = None;
                Err("Redis did not answer the deletion within 10 s".to_string())
            }
        }
    }
}

impl Layer for Redis {
    fn invalidate<'a>(&'a self, selectors: &'a [Selector], _mode: Mode) -> Delivery<'a> {
        Box::pin(async move {
            let mut sets = Vec::new();
            let mut skipped = Vec::new();
            for selector in selectors {
                match selector {
                    Selector::Tag(t) => sets.push(format!("{}tag:{t}", self.prefix)),
                    Selector::Url(u) => sets.push(format!("{}url:{u}", self.prefix)),
                    Selector::Prefix(u) => skipped.push(format!("prefix {u}")),
                    Selector::All => skipped.push("everything".to_string()),
                }
            }
            let mut detail = Vec::new();
            if !sets.is_empty() {
                let n = self.delete(sets.clone()).await?;
                detail.push(format!("deleted {n} key(s) of {}", sets.join(", ")));
            }
            if !skipped.is_empty() {
                detail.push(format!("skipped {} (no Redis set names them)", skipped.join(", ")));
            }
            Ok(detail.join("; "))
        })
    }
}
