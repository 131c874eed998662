//! The HTTP client: one call per method, problem+json answers turned into [`ClientError`].

use serde_json::Value;

/// A call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server answered with an error status; `detail` is the problem's detail.
    #[error("HTTP {status}: {detail}")]
    Refused { status: u16, detail: String },
}

/// A client of one server's `/api/v1/orchestrator`.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// `server` is the scheme, host and port, e.g. `http://127.0.0.1:8080`.
    pub fn new(server: &str, token: Option<String>) -> Self {
        let base = format!("{}/api/v1/orchestrator", server.trim_end_matches('/'));
        Self { base, http: reqwest::Client::new(), token }
    }

    /// Whether anything answers the health endpoint (within a second).
    pub async fn reachable(&self) -> bool {
        let request = self.http.get(format!("{}/health", self.base)).timeout(std::time::Duration::from_secs(1));
        request.send().await.is_ok()
    }

    async fn raw(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<String, ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if status >= 400 {
            let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let detail = problem["detail"].as_str().or(problem["title"].as_str()).unwrap_or(&text).to_owned();
            return Err(ClientError::Refused { status, detail });
        }
        Ok(text)
    }

    /// A call whose answer is JSON.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let text = self.raw(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Refused { status: 200, detail: format!("not JSON: {e}") })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, path, None).await
    }
}
