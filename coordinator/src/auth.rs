//! Bearer-token authentication and per-operation scopes.
//!
//! Tokens are JWTs signed with the algorithm the configuration pins (HS256 with
//! `GL_ORCHESTRATOR_JWT_SECRET`, RS256 or EdDSA with `GL_ORCHESTRATOR_JWT_PUBLIC_KEY`), must carry
//! `exp`, and are checked against `iss`/`aud` when those are configured, with 30 s of leeway.
//! The `scope` claim (space-separated) holds the permissions of [`crate::endpoints`]; the
//! `tenant` claim scopes every row the request touches (`default` when absent), so another
//! tenant's object is simply not found.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engine::config::{AuthMode, Settings};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::endpoints::{ADMIN_SCOPE, scope_for};
use crate::problem::ApiError;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: String,
    pub scopes: Vec<String>,
}

/// The caller's tenant, for handlers.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .map(|p| Tenant(p.tenant.clone()))
            .ok_or_else(|| ApiError::Internal("no principal on an authenticated route".into()))
    }
}

/// The verifier built once from the settings.
#[derive(Clone)]
pub struct Verifier {
    key: Option<Arc<(DecodingKey, Validation)>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("enabled", &self.key.is_some()).finish()
    }
}

impl Verifier {
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        if settings.auth == AuthMode::Disabled {
            return Ok(Self { key: None });
        }
        let (algorithm, key) = match settings.jwt_algorithm.as_str() {
            "HS256" => {
                let secret = settings.jwt_secret.as_ref().ok_or("GL_ORCHESTRATOR_JWT_SECRET must be set")?;
                (Algorithm::HS256, DecodingKey::from_secret(secret.expose().as_bytes()))
            }
            name => {
                let pem = settings.jwt_public_key.as_ref().ok_or("GL_ORCHESTRATOR_JWT_PUBLIC_KEY must be set")?;
                let pem = pem.expose().as_bytes();
                match name {
                    "RS256" => {
                        (Algorithm::RS256, DecodingKey::from_rsa_pem(pem).map_err(|e| format!("JWT_PUBLIC_KEY: {e}"))?)
                    }
                    _ => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem).map_err(|e| format!("JWT_PUBLIC_KEY: {e}"))?),
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp"]);
        match &settings.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &settings.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self { key: Some(Arc::new((key, validation))) })
    }

    fn principal(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let Some(key) = &self.key else {
            return Ok(Principal { tenant: "default".into(), scopes: vec![ADMIN_SCOPE.into()] });
        };
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &key.0, &key.1)
            .map_err(|e| ApiError::Unauthorized(format!("the token is not valid: {e}")))?;
        let tenant = data.claims.tenant.unwrap_or_else(|| "default".into());
        engine::ids::check_id(&tenant).map_err(|e| ApiError::Unauthorized(format!("tenant claim {e}")))?;
        let scopes = data.claims.scope.unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        Ok(Principal { tenant, scopes })
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

/// Authenticates the request and checks the scope its operation needs.
pub async fn authenticate(State(verifier): State<Verifier>, mut request: Request, next: Next) -> Response {
    let path = request.extensions().get::<MatchedPath>().map_or_else(String::new, |m| m.as_str().to_owned());
    let required = scope_for(request.method().as_str(), &path);
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = match required {
        None => Principal { tenant: "default".into(), scopes: Vec::new() },
        Some(scope) => match verifier.principal(authorization) {
            Ok(p) if p.scopes.iter().any(|s| s == scope || s == ADMIN_SCOPE) => p,
            Ok(_) => return ApiError::Forbidden(format!("the token lacks the scope {scope}")).into_response(),
            Err(e) => return e.into_response(),
        },
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}
