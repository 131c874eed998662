//! The Redis adapter (fred): execution locks ([`Locks`]) and the DAG definition cache.
//!
//! Redis is optional. Every call is bounded (`GL_ORCHESTRATOR_REDIS_TIMEOUT_MS`, by default
//! [`CALL_TIMEOUT`]); after a failure the adapter
//! answers "unavailable" at once for [`BACKOFF`] instead of making each caller wait again, then
//! probes with the next call. Callers fall back to PostgreSQL, which is always the authority.
//! Every key lives under the configured prefix (`gl:orchestrator:` by default) and carries a TTL.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use fred::prelude::*;
use uuid::Uuid;

use crate::locks::{Fence, LockError, Locks};
use crate::service::dags::DagCache;
use crate::store::DagRow;

/// Longest a caller waits on one Redis call.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a failed Redis is not asked again.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// How long a cached DAG lives (bounds staleness when an invalidation could not be delivered).
pub const DAG_TTL: Duration = Duration::from_secs(60);

/// Takes the lock unless a live higher epoch holds it. KEYS[1] lock; ARGV epoch, value, ttl ms.
const HOLD: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local epoch = tonumber(string.match(current, '^(%-?%d+):'))
  if epoch and epoch > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Deletes the lock only if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A Redis connection (reconnecting in the background) with the key prefix.
pub struct Redis {
    client: Client,
    prefix: String,
    down_until: Mutex<Option<Instant>>,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish()
    }
}

impl Redis {
    /// Builds the client and starts connecting in the background; never waits for Redis.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, LockError> {
        Self::connect_with_timeout(url, prefix, CALL_TIMEOUT)
    }

    /// [`Redis::connect`] with every call bounded by `timeout`.
    pub fn connect_with_timeout(url: &str, prefix: &str, timeout: Duration) -> Result<Self, LockError> {
        let config = Config::from_url(url).map_err(|e| LockError(format!("GL_ORCHESTRATOR_REDIS_URL: {e}")))?;
        let client = Builder::from_config(config)
            .with_config(|c| c.fail_fast = false)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| LockError(e.to_string()))?;
        // The handle is the background connection task; dropping it leaves the task running.
        drop(client.connect());
        Ok(Self { client, prefix: prefix.to_owned(), down_until: Mutex::new(None), timeout })
    }

    pub fn lock_key(&self, execution: Uuid) -> String {
        format!("{}lock:{execution}", self.prefix)
    }

    fn dag_key(&self, tenant: &str, dag_id: &str) -> String {
        format!("{}dag:{tenant}:{dag_id}", self.prefix)
    }

    /// Runs one call unless Redis failed within [`BACKOFF`]; a failure starts the back-off.
    async fn call<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, LockError> {
        let now = Instant::now();
        if self.down_until.lock().ok().and_then(|d| *d).is_some_and(|until| until > now) {
            return Err(LockError("recently unreachable".into()));
        }
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(LockError(e.to_string())),
            Err(_) => Err(LockError("timed out".into())),
        };
        if let Ok(mut down) = self.down_until.lock() {
            *down = outcome.is_err().then(|| Instant::now() + BACKOFF);
        }
        outcome
    }

    /// The cached DAG, if any. A miss and an unavailable Redis look the same to the caller.
    pub async fn cached_dag(&self, tenant: &str, dag_id: &str) -> Option<DagRow> {
        let text: Option<String> = self.call(self.client.get(self.dag_key(tenant, dag_id))).await.ok()?;
        serde_json::from_str(&text?).ok()
    }

    pub async fn cache_dag(&self, tenant: &str, row: &DagRow) {
        let Ok(text) = serde_json::to_string(row) else { return };
        let ttl = Expiration::EX(DAG_TTL.as_secs() as i64);
        let set = self.client.set::<(), _, _>(self.dag_key(tenant, &row.dag_id), text, Some(ttl), None, false);
        let _ = self.call(set).await;
    }

    /// Drops a cached DAG after it changed; `false` when Redis could not be told (the entry then
    /// expires within [`DAG_TTL`], and executions never start from it: see `Store::create_execution`).
    pub async fn forget_dag(&self, tenant: &str, dag_id: &str) -> bool {
        self.call(self.client.del::<i64, _>(self.dag_key(tenant, dag_id))).await.is_ok()
    }
}

#[async_trait::async_trait]
impl DagCache for Redis {
    async fn cached(&self, tenant: &str, dag_id: &str) -> Option<DagRow> {
        self.cached_dag(tenant, dag_id).await
    }

    async fn remember(&self, tenant: &str, row: &DagRow) {
        self.cache_dag(tenant, row).await;
    }

    async fn forget(&self, tenant: &str, dag_id: &str) {
        self.forget_dag(tenant, dag_id).await;
    }
}

#[async_trait::async_trait]
impl Locks for Redis {
    async fn hold(&self, execution: Uuid, fence: &Fence, ttl: Duration) -> Result<bool, LockError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let args = vec![fence.epoch.to_string(), fence.value(), ttl_ms.to_string()];
        let taken: i64 = self.call(self.client.eval(HOLD, vec![self.lock_key(execution)], args)).await?;
        Ok(taken == 1)
    }

    async fn release(&self, execution: Uuid, fence: &Fence) -> Result<(), LockError> {
        let _: i64 = self.call(self.client.eval(RELEASE, vec![self.lock_key(execution)], vec![fence.value()])).await?;
        Ok(())
    }

    async fn holder(&self, execution: Uuid) -> Result<Option<String>, LockError> {
        self.call(self.client.get(self.lock_key(execution))).await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
