//! Calls to MLflow's REST API: one client with a pool of kept-alive connections, a
//! bounded number of calls at once, a bounded time for each, and MLflow's error codes
//! turned into standard statuses.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use mlmesh::protocol::{Code, Status};

use super::{MlflowError, MlflowSection};

/// The longest MLflow message kept in a status (MLflow's may quote whole SQL statements).
const MAX_MESSAGE: usize = 400;

/// MLflow's REST API.
#[derive(Debug)]
pub(crate) struct Rest {
    client: reqwest::Client,
    /// `<url>/api/2.0/mlflow/`.
    base: String,
    /// `<url>/health`.
    health: String,
    token: Option<String>,
    timeout: Duration,
    permits: Semaphore,
}

/// Why a call failed.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// MLflow answered with an error.
    Mlflow {
        http: u16,
        code: String,
        message: String,
    },
    /// No answer: it cannot be reached, took too long, or there were too many calls.
    Unavailable(String),
    /// An answer that is not what the API promises.
    Garbled(String),
}

impl Fault {
    /// Whether MLflow answered with this error code.
    pub(crate) fn is(&self, code: &str) -> bool {
        matches!(self, Fault::Mlflow { code: c, .. } if c == code)
    }

    /// Whether MLflow said the thing named does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        self.is("RESOURCE_DOES_NOT_EXIST")
    }

    /// The standard status of the fault.
    pub(crate) fn status(&self) -> Status {
        match self {
            Fault::Unavailable(why) => Status::error(Code::Unavailable, why.clone()),
            Fault::Garbled(why) => Status::error(Code::Internal, why.clone()),
            Fault::Mlflow {
                http,
                code,
                message,
            } => {
                let standard = map_code(code, *http);
                Status::error(standard, format!("mlflow: {code}: {message}"))
            }
        }
    }

    /// The status, naming `field`.
    pub(crate) fn status_at(&self, field: &str) -> Status {
        let s = self.status();
        if matches!(
            s.code,
            Code::NotFound | Code::InvalidArgument | Code::AlreadyExists
        ) {
            s.with_field(field)
        } else {
            s
        }
    }
}

impl From<Fault> for Status {
    fn from(f: Fault) -> Status {
        f.status()
    }
}

/// MLflow's `error_code` (or, without one, the HTTP status) as a standard code.
pub(crate) fn map_code(code: &str, http: u16) -> Code {
    match code {
        "RESOURCE_DOES_NOT_EXIST" | "NOT_FOUND" => Code::NotFound,
        "INVALID_PARAMETER_VALUE" | "BAD_REQUEST" | "MALFORMED_REQUEST" | "INVALID_ARGUMENT" => {
            Code::InvalidArgument
        }
        "RESOURCE_ALREADY_EXISTS" | "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" | "UNAUTHENTICATED" | "CUSTOMER_UNAUTHORIZED" => Code::PermissionDenied,
        "INVALID_STATE" | "RESOURCE_CONFLICT" => Code::FailedPrecondition,
        "TEMPORARILY_UNAVAILABLE"
        | "REQUEST_LIMIT_EXCEEDED"
        | "RESOURCE_EXHAUSTED"
        | "DEADLINE_EXCEEDED"
        | "ABORTED" => Code::Unavailable,
        "ENDPOINT_NOT_FOUND" | "NOT_IMPLEMENTED" | "FEATURE_DISABLED" => Code::Unimplemented,
        "INTERNAL_ERROR" if http != 503 => Code::Internal,
        _ => match http {
            400 | 422 => Code::InvalidArgument,
            401 | 403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            409 => Code::AlreadyExists,
            408 | 429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Internal,
        },
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    error_code: String,
    message: String,
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Rest {
    pub(crate) fn new(section: &MlflowSection) -> Result<Self, MlflowError> {
        let timeout = Duration::from_millis(section.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(section.max_in_flight)
            // Loopback and private MLflow servers answer at once; Nagle only delays.
            .tcp_nodelay(true)
            .user_agent(concat!("mlmesh-mlflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MlflowError::Http(e.to_string()))?;
        let url = section.url.trim_end_matches('/');
        Ok(Self {
            client,
            base: format!("{url}/api/2.0/mlflow/"),
            health: format!("{url}/health"),
            token: section.token.clone(),
            timeout,
            permits: Semaphore::new(section.max_in_flight),
        })
    }

    /// `POST <path>` with a JSON body.
    pub(crate) async fn post<B, R>(&self, path: &str, body: &B) -> Result<R, Fault>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    /// `PATCH <path>` with a JSON body.
    pub(crate) async fn patch<B, R>(&self, path: &str, body: &B) -> Result<R, Fault>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call(Method::PATCH, path, Some(body), &[]).await
    }

    /// `DELETE <path>` with a JSON body.
    pub(crate) async fn delete<B>(&self, path: &str, body: &B) -> Result<(), Fault>
    where
        B: Serialize + ?Sized,
    {
        self.call::<B, serde_json::Value>(Method::DELETE, path, Some(body), &[])
            .await
            .map(drop)
    }

    /// `GET <path>?<query>`.
    pub(crate) async fn get<R>(&self, path: &str, query: &[(&str, String)]) -> Result<R, Fault>
    where
        R: DeserializeOwned,
    {
        self.call::<(), R>(Method::GET, path, None, query).await
    }

    /// `GET /health`.
    pub(crate) async fn health(&self) -> Result<(), Status> {
        let _permit = self.permit().await?;
        let resp = self
            .client
            .get(&self.health)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if resp.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(Status::error(
                Code::Unavailable,
                format!("mlflow: /health answered {}", resp.status()),
            ))
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Fault> {
        match tokio::time::timeout(self.timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Fault::Unavailable(format!(
                "mlflow: too many calls under way; none finished within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> Fault {
        let what = if e.is_timeout() {
            format!("did not answer within {} ms", self.timeout.as_millis())
        } else if e.is_connect() {
            "cannot be reached".to_owned()
        } else {
            "dropped the call".to_owned()
        };
        // The source chain says why (refused, reset, ...) without the URL twice.
        let mut cause = String::new();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        Fault::Unavailable(format!("mlflow at {} {what}: {cause}", self.health_base()))
    }

    fn health_base(&self) -> &str {
        self.health.trim_end_matches("/health")
    }

    async fn call<B, R>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        query: &[(&str, String)],
    ) -> Result<R, Fault>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let _permit = self.permit().await?;
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if !query.is_empty() {
            req = req.query(query);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            let body: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
            return serde_json::from_slice(body).map_err(|e| {
                Fault::Garbled(format!(
                    "mlflow: {path} answered what is not its API's JSON ({e})"
                ))
            });
        }
        let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = if err.message.is_empty() {
            let text = String::from_utf8_lossy(&bytes);
            if text.trim_start().starts_with('<') {
                format!("HTTP {status} from {path}")
            } else {
                clip(text.trim())
            }
        } else {
            clip(&err.message)
        };
        let code = if err.error_code.is_empty() {
            format!("HTTP_{}", status.as_u16())
        } else {
            err.error_code
        };
        Err(Fault::Mlflow {
            http: status.as_u16(),
            code,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlflow_codes_map_to_standard_ones() {
        for (code, http, want) in [
            ("RESOURCE_DOES_NOT_EXIST", 404, Code::NotFound),
            ("INVALID_PARAMETER_VALUE", 400, Code::InvalidArgument),
            ("RESOURCE_ALREADY_EXISTS", 400, Code::AlreadyExists),
            ("PERMISSION_DENIED", 403, Code::PermissionDenied),
            ("REQUEST_LIMIT_EXCEEDED", 429, Code::Unavailable),
            ("TEMPORARILY_UNAVAILABLE", 503, Code::Unavailable),
            ("INTERNAL_ERROR", 500, Code::Internal),
            ("HTTP_404", 404, Code::Unimplemented),
            ("HTTP_502", 502, Code::Unavailable),
        ] {
            assert_eq!(map_code(code, http), want, "{code}");
            assert_eq!(
                map_code(code, http).is_retryable(),
                want == Code::Unavailable
            );
        }
    }
}
