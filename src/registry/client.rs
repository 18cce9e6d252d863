//! The HTTP side of the distribution API: one request with auth, bounded bodies and retries.
//!
//! A small reqwest client rather than `oci_client::Client`, because oci-client 0.18 reads manifest
//! and blob bodies without a size bound, `push_manifest_raw` returns a URL instead of the
//! `Docker-Content-Digest` header, and it has no retries. `oci_client::Reference` still parses the
//! repository names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use tracing::{debug, warn};

use super::RegistryOptions;
use super::address::{GuardedResolver, Refused, check_url, redirect_policy, refusal_in, without_query};
use super::auth::{
    Challenge, EcrToken, RegistryAuth, basic_header, check_realm, ecr_token, is_ecr_host, parse_challenge,
    parse_token_response,
};
use super::credentials::AuthHost;
use super::error::RegistryError;
use super::observe::{RegistryObject, RequestObserver};
use super::parse::{RegistryErrorBody, parse_error_body};
use super::retry::RetryPolicy;

/// Error bodies and token answers are read up to this size; more is cut off.
const SMALL_BODY: usize = 64 * 1024;
/// Token server answers larger than this are refused.
const TOKEN_BODY: usize = 1024 * 1024;
/// Why a token realm was not contacted, for [`RegistryError::AuthFailed`].
const REALM_REFUSED: &str = "the token server was not contacted (a realm is followed over https, or plain http to a \
                             --registry-plain-http host, on the registry's own host or one listed with \
                             --registry-auth-host)";

/// A parsed repository: where to send requests and how to name it in messages.
#[derive(Clone, Debug)]
pub(crate) struct Repo {
    /// The repository as the user wrote it, e.g. `127.0.0.1:5000/demo`.
    pub display: String,
    /// The host the API lives on (`docker.io` → `index.docker.io`).
    pub api_host: String,
    /// The repository name inside the registry, e.g. `demo` or `library/ubuntu`.
    pub name: String,
    /// `http[s]://<api_host>/v2/<name>`
    pub base: String,
    /// [`base`](Self::base), parsed.
    pub url: Url,
}

impl Repo {
    /// Parse `repository` (`host[:port]/name`, without tag or digest) for use with `tag`.
    pub fn parse(repository: &str, tag: &str, plain_http_hosts: &[String]) -> Result<Repo, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            repository: repository.to_string(),
            reason,
        };
        let reference = oci_client::Reference::try_from(format!("{repository}:{tag}")).map_err(|e| {
            invalid(format!(
                "{e} (expected host[:port]/name without tag or digest, and a valid tag)"
            ))
        })?;
        if reference.digest().is_some() || reference.tag() != Some(tag) {
            return Err(invalid("it must not contain a tag or digest".into()));
        }
        if reference.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("the repository name must be lowercase".into()));
        }
        let api_host = reference.resolve_registry().to_string();
        let plain = plain_http_hosts
            .iter()
            .any(|h| h == reference.registry() || *h == api_host);
        let scheme = if plain { "http" } else { "https" };
        let base = format!("{scheme}://{api_host}/v2/{}", reference.repository());
        let url = Url::parse(&base).map_err(|e| invalid(format!("{base} is not a URL: {e}")))?;
        Ok(Repo {
            display: repository.to_string(),
            base,
            url,
            name: reference.repository().to_string(),
            api_host,
        })
    }

    /// `<repository>:<tag>`
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.display)
    }

    /// `<repository>@<digest>`
    pub fn image_at(&self, digest: &str) -> String {
        format!("{}@{digest}", self.display)
    }
}

/// One request to a repository.
pub(crate) struct Request<'a> {
    pub method: Method,
    pub repo: &'a Repo,
    /// `/v2/<name>/manifests/<reference>` or `/v2/<name>/blobs/<reference>`.
    pub object: RegistryObject,
    /// A tag or a digest.
    pub reference: &'a str,
    /// What to call it in messages: an image reference.
    pub image: &'a str,
    /// `reading`, `pushing`, … for messages.
    pub operation: &'static str,
    /// Whether the request writes (Bearer scope `pull,push` rather than `pull`).
    pub push: bool,
    pub accept: Option<&'static str>,
    pub content_type: Option<&'static str>,
    pub body: Option<Vec<u8>>,
    /// Success bodies larger than this are refused with [`RegistryError::BodyTooLarge`].
    pub limit: usize,
    /// What the body is, for the too-large message: `manifest`, `config blob`.
    pub what: &'static str,
}

/// A response with its body read (bounded).
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The distribution errors in the body, if it has some.
    pub fn errors(&self) -> Vec<RegistryErrorBody> {
        parse_error_body(&self.body)
    }

    pub fn has_code(&self, code: &str) -> bool {
        self.errors().iter().any(|e| e.code == code)
    }

    /// `: CODE message; CODE message` from the body, or the start of a non-JSON body; empty if none.
    pub fn detail(&self) -> String {
        let errors = self.errors();
        let text = if errors.is_empty() {
            String::from_utf8_lossy(&self.body)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        } else {
            errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        }
    }
}

enum Fail {
    /// Worth another attempt: a network error or a 5xx/429, with its `Retry-After`.
    Retry(String, Option<Duration>),
    Fatal(RegistryError),
}

struct CachedToken {
    header: String,
    until: Instant,
}

#[derive(Default)]
struct AuthState {
    /// What each host asked for last.
    challenges: HashMap<String, Challenge>,
    /// Bearer tokens by (host, scope).
    tokens: HashMap<(String, String), CachedToken>,
}

pub(crate) struct Transport {
    http: Result<reqwest::Client, String>,
    pub auth: RegistryAuth,
    pub plain_http_hosts: Vec<String>,
    auth_hosts: Vec<AuthHost>,
    allow_loopback: bool,
    pub retry: RetryPolicy,
    observer: Option<Arc<dyn RequestObserver>>,
    state: Mutex<AuthState>,
    /// ECR tokens by region; the async mutex makes concurrent requests share one refresh.
    ecr: tokio::sync::Mutex<HashMap<String, EcrToken>>,
}

impl Transport {
    pub fn new(options: RegistryOptions, retry: RetryPolicy) -> Transport {
        let allow_loopback = options.allow_loopback;
        // Every name goes through the guard and every redirect through the policy: there is no
        // client without them (when none can be built, every request fails, as transient).
        let http = reqwest::Client::builder()
            .dns_resolver(GuardedResolver { allow_loopback })
            .redirect(redirect_policy(allow_loopback, options.plain_http_hosts.clone()))
            .user_agent(concat!("multiarch-operator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                warn!(error = %e, "cannot build the registry HTTP client; every registry request will fail");
                format!("cannot build the HTTP client: {}", describe_reqwest(&e))
            });
        Transport {
            http,
            auth: options.auth,
            plain_http_hosts: options.plain_http_hosts,
            auth_hosts: options.auth_hosts,
            allow_loopback,
            retry,
            observer: options.observer,
            state: Mutex::new(AuthState::default()),
            ecr: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn scope(req: &Request<'_>) -> String {
        let actions = if req.push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", req.repo.name)
    }

    /// Send a request: authenticate (learning the scheme from the first 401 and answering it
    /// once), retry 5xx/429/network failures with backoff, and read the body within bounds.
    /// Any status comes back as a [`Response`] except those retried to exhaustion.
    pub async fn send(&self, req: &Request<'_>) -> Result<Response, RegistryError> {
        // A forbidden IP literal is refused before anything, an ECR token included; names are
        // checked as they are resolved.
        if let Err(r) = check_url(&req.repo.url, self.allow_loopback) {
            return Err(self.refused(req, r));
        }
        let url = format!("{}/{}/{}", req.repo.base, req.object.path_segment(), req.reference);
        let mut attempt: u32 = 0;
        let mut answered_challenge = false;
        loop {
            attempt += 1;
            let outcome = match self.authorization(req).await {
                Ok(auth) => self.attempt(req, &url, auth).await,
                Err(Fail::Retry(m, after)) => Err(Fail::Retry(m, after)),
                Err(Fail::Fatal(e)) => return Err(e),
            };
            match outcome {
                Ok(resp) if resp.status == StatusCode::UNAUTHORIZED && !answered_challenge => {
                    answered_challenge = true;
                    attempt -= 1;
                    self.learn_challenge(req, &resp).await;
                    debug!(%url, "401, retrying with credentials for the challenge");
                }
                Ok(resp) => return Ok(resp),
                Err(Fail::Fatal(e)) => return Err(e),
                Err(Fail::Retry(message, retry_after)) => {
                    match self.retry.delay(attempt, fastrand::f64(), retry_after) {
                        Some(delay) => {
                            debug!(%url, attempt, ?delay, %message, "registry request failed, retrying");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            return Err(RegistryError::Unavailable {
                                operation: req.operation,
                                image: req.image.to_string(),
                                attempts: attempt,
                                last: message,
                            });
                        }
                    }
                }
            }
        }
    }

    /// The HTTP client, or why there is none.
    fn http(&self) -> Result<&reqwest::Client, Fail> {
        self.http.as_ref().map_err(|e| Fail::Retry(e.clone(), None))
    }

    /// The error for a connection [`Refused`] while sending `req`.
    fn refused(&self, req: &Request<'_>, r: Refused) -> RegistryError {
        match r.redirect_status {
            Some(status) => RegistryError::Rejected {
                operation: req.operation,
                image: req.image.to_string(),
                status,
                detail: format!(": {}", r.message),
            },
            None if self.is_registry_host(req, &r) => RegistryError::InvalidReference {
                repository: req.repo.display.clone(),
                reason: r.message,
            },
            None => RegistryError::InvalidReference {
                repository: req.repo.display.clone(),
                reason: format!("the registry redirected a request to a refused host: {}", r.message),
            },
        }
    }

    /// Whether a refusal is about the repository's own host (so no request was sent at all).
    fn is_registry_host(&self, req: &Request<'_>, r: &Refused) -> bool {
        req.repo.url.host_str().is_some_and(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(&r.host)
        })
    }

    async fn attempt(&self, req: &Request<'_>, url: &str, auth: Option<String>) -> Result<Response, Fail> {
        let mut builder = self.http()?.request(req.method.clone(), url);
        if let Some(a) = &auth {
            builder = builder.header(AUTHORIZATION, a);
        }
        if let Some(accept) = req.accept {
            builder = builder.header(ACCEPT, accept);
        }
        if let Some(ct) = req.content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let sent = builder.send().await;
        let refused: Option<Refused> = sent.as_ref().err().and_then(|e| refusal_in(e)).cloned();
        // A refusal of the registry's own address sent nothing: no attempt to count.
        let sent_nothing = refused
            .as_ref()
            .is_some_and(|r| r.redirect_status.is_none() && self.is_registry_host(req, r));
        if let Some(observer) = &self.observer
            && !sent_nothing
        {
            observer.attempted(
                &req.method,
                req.object,
                sent.as_ref().ok().map(reqwest::Response::status),
            );
        }
        if let Some(r) = refused {
            return Err(Fail::Fatal(self.refused(req, r)));
        }
        let resp = sent.map_err(|e| {
            if req.repo.base.starts_with("https://") && answered_plain_http(&e) {
                Fail::Fatal(RegistryError::PlainHttp {
                    host: req.repo.display.split('/').next().unwrap_or_default().to_owned(),
                })
            } else if e.is_builder() {
                Fail::Fatal(RegistryError::InvalidReference {
                    repository: req.repo.display.clone(),
                    reason: describe_reqwest(&e),
                })
            } else {
                Fail::Retry(describe_reqwest(&e), None)
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = read_truncated(resp, SMALL_BODY).await.unwrap_or_default();
            let r = Response { status, headers, body };
            return Err(Fail::Retry(format!("HTTP {status}{}", r.detail()), retry_after));
        }
        let body = if status.is_success() {
            read_bounded(resp, req.limit).await.map_err(|e| match e {
                ReadError::TooLarge(size) => Fail::Fatal(RegistryError::BodyTooLarge {
                    image: req.image.to_string(),
                    what: req.what,
                    size,
                    limit: req.limit,
                }),
                ReadError::Network(m) => Fail::Retry(m, None),
            })?
        } else {
            read_truncated(resp, SMALL_BODY)
                .await
                .map_err(|m| Fail::Retry(m, None))?
        };
        Ok(Response { status, headers, body })
    }

    /// The `Authorization` value for this request, if we know what the host wants.
    async fn authorization(&self, req: &Request<'_>) -> Result<Option<String>, Fail> {
        let host = &req.repo.api_host;
        if let RegistryAuth::Ecr(client) = &self.auth
            && is_ecr_host(host)
        {
            return self.ecr_header(client, host).await.map(Some);
        }
        let challenge = self.lock_state(|s| s.challenges.get(host).cloned());
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .auth
                .credential_for(host)
                .map(|c| basic_header(&c.username, &c.password))),
            Some(Challenge::Bearer { realm, service }) => {
                let key = (host.clone(), Self::scope(req));
                let cached = self.lock_state(|s| {
                    s.tokens
                        .get(&key)
                        .filter(|t| t.until > Instant::now())
                        .map(|t| t.header.clone())
                });
                if cached.is_some() {
                    return Ok(cached);
                }
                let token = self.fetch_token(req, &realm, service.as_deref(), &key.1).await?;
                self.lock_state(|s| {
                    s.tokens.insert(
                        key,
                        CachedToken {
                            header: token.0.clone(),
                            until: Instant::now() + token.1,
                        },
                    )
                });
                Ok(Some(token.0))
            }
        }
    }

    /// Remember what a 401 asked for, and drop the credentials that failed.
    async fn learn_challenge(&self, req: &Request<'_>, resp: &Response) {
        let host = req.repo.api_host.clone();
        if matches!(self.auth, RegistryAuth::Ecr(_)) && is_ecr_host(&host) {
            // The token may have been revoked or expired early: fetch a new one.
            if let Some(region) = ecr_region(&host) {
                self.ecr.lock().await.remove(&region);
            }
            return;
        }
        let challenge = resp.header(WWW_AUTHENTICATE.as_str()).and_then(parse_challenge);
        let scope = Self::scope(req);
        self.lock_state(|s| {
            s.tokens.remove(&(host.clone(), scope));
            match challenge {
                Some(c) => {
                    s.challenges.insert(host, c);
                }
                None => {
                    s.challenges.remove(&host);
                }
            }
        });
    }

    /// Ask a Bearer token server for a token for this scope, with the credentials bound to the
    /// registry's host; a realm the registry may not send us to is refused, and nothing is sent.
    async fn fetch_token(
        &self,
        req: &Request<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), Fail> {
        let refuse = |why: String| {
            Fail::Fatal(RegistryError::AuthFailed {
                operation: req.operation,
                image: req.image.to_string(),
                registry: req.repo.api_host.clone(),
                status: 401,
                detail: format!(": {why}"),
                hint: REALM_REFUSED,
            })
        };
        let url = match Url::parse(realm) {
            Ok(url) => url,
            Err(e) => return Err(refuse(format!("its token realm {realm:?} is not a URL: {e}"))),
        };
        if let Err(r) = check_url(&url, self.allow_loopback) {
            return Err(refuse(format!("its token realm {}: {r}", without_query(&url))));
        }
        let url = check_realm(realm, &req.repo.url, &self.plain_http_hosts, &self.auth_hosts).map_err(refuse)?;
        let realm = without_query(&url);
        let realm = realm.as_str();
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut builder = self.http()?.get(url.clone()).query(&query);
        if let Some(c) = self.auth.credential_for(&req.repo.api_host) {
            builder = builder.header(AUTHORIZATION, basic_header(&c.username, &c.password));
        }
        let resp = builder.send().await.map_err(|e| match refusal_in(&e) {
            Some(r) => refuse(format!("its token realm {realm}: {r}")),
            None => Fail::Retry(format!("token server {realm}: {}", describe_reqwest(&e)), None),
        })?;
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Fail::Retry(format!("token server {realm}: HTTP {status}"), None));
        }
        if !status.is_success() {
            let body = read_truncated(resp, SMALL_BODY).await.unwrap_or_default();
            let r = Response {
                status,
                headers: HeaderMap::new(),
                body,
            };
            return Err(Fail::Fatal(self.auth_failed(
                req.operation,
                req.image,
                &req.repo.api_host,
                status.as_u16(),
                format!("{} from token server {realm}", r.detail()),
            )));
        }
        let body = read_bounded(resp, TOKEN_BODY).await.map_err(|e| match e {
            ReadError::Network(m) => Fail::Retry(format!("token server {realm}: {m}"), None),
            ReadError::TooLarge(size) => Fail::Fatal(RegistryError::BodyTooLarge {
                image: req.image.to_string(),
                what: "token server answer",
                size,
                limit: TOKEN_BODY,
            }),
        })?;
        let (token, ttl) = parse_token_response(&body).ok_or_else(|| {
            Fail::Fatal(self.auth_failed(
                req.operation,
                req.image,
                &req.repo.api_host,
                status.as_u16(),
                format!(": token server {realm} answered without a token"),
            ))
        })?;
        Ok((format!("Bearer {token}"), ttl))
    }

    /// An ECR token for the region of `host`, fetched or refreshed when needed.
    async fn ecr_header(&self, client: &aws_sdk_ecr::Client, host: &str) -> Result<String, Fail> {
        let region = ecr_region(host).unwrap_or_default();
        let mut tokens = self.ecr.lock().await;
        if let Some(t) = tokens.get(&region)
            && SystemTime::now() < t.refresh_at
        {
            return Ok(t.header.clone());
        }
        let regional = if client.config().region().map(|r| r.as_ref()) == Some(region.as_str()) {
            client.clone()
        } else {
            aws_sdk_ecr::Client::from_conf(
                client
                    .config()
                    .to_builder()
                    .region(aws_sdk_ecr::config::Region::new(region.clone()))
                    .build(),
            )
        };
        let fail = |reason: String, transient: bool| {
            Fail::Fatal(RegistryError::EcrToken {
                registry: host.to_string(),
                reason,
                transient,
            })
        };
        let out = regional.get_authorization_token().send().await.map_err(|e| {
            use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
            let transient = match &e {
                SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
                SdkError::ServiceError(s) => {
                    s.raw().status().is_server_error()
                        || matches!(
                            e.code(),
                            Some("ThrottlingException" | "ServerException" | "TooManyRequestsException")
                        )
                }
                _ => false,
            };
            fail(
                format!("GetAuthorizationToken failed: {}", crate::util::error_chain(&e)),
                transient,
            )
        })?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| fail("GetAuthorizationToken returned no authorizationData".into(), false))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| fail("GetAuthorizationToken returned no authorizationToken".into(), false))?;
        let expires_at = data.expires_at().and_then(|d| SystemTime::try_from(*d).ok());
        let t = ecr_token(token, expires_at, SystemTime::now()).map_err(|m| fail(m, false))?;
        debug!(%region, refresh_at = ?t.refresh_at, "new ECR authorization token");
        let header = t.header.clone();
        tokens.insert(region, t);
        Ok(header)
    }

    pub fn auth_failed(
        &self,
        operation: &'static str,
        image: &str,
        host: &str,
        status: u16,
        detail: String,
    ) -> RegistryError {
        RegistryError::AuthFailed {
            operation,
            image: image.to_string(),
            registry: host.to_string(),
            status,
            detail,
            hint: match (&self.auth, status) {
                (RegistryAuth::Anonymous, _) => "the registry wants credentials and none are configured",
                (RegistryAuth::Basic(c), _) if c.get(host).is_none() => {
                    "no credentials are bound to this host (credentials in --registry-auth-file are sent only to the \
                     host they are listed under)"
                }
                (RegistryAuth::Basic(_), 401) => "check the username and password bound to this host",
                (RegistryAuth::Basic(_), _) => "these credentials may not access this repository",
                (RegistryAuth::Ecr(_), _) if !is_ecr_host(host) => {
                    "ECR credentials are only sent to ECR hosts and this is not one"
                }
                (RegistryAuth::Ecr(_), _) => {
                    "check the operator role's ECR permissions (ecr:BatchGetImage, ecr:GetDownloadUrlForLayer, ecr:PutImage) and the repository policy"
                }
            },
        }
    }

    fn lock_state<T>(&self, f: impl FnOnce(&mut AuthState) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

/// The region label of an ECR host.
fn ecr_region(host: &str) -> Option<String> {
    let host = host.split(':').next()?;
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [_, "dkr", _, region, ..] | [_, "dkr-ecr" | "dkr-ecr-fips", region, ..] => Some((*region).to_string()),
        _ => None,
    }
}

/// Whether a TLS connection failed because the server answered in plain HTTP (rustls reads the
/// `HTTP/1.1 400` of a plain-http registry as a record of an invalid content type).
fn answered_plain_http(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("InvalidContentType") || text.contains("http response to https client") {
            return true;
        }
        source = s.source();
    }
    false
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

enum ReadError {
    TooLarge(Option<u64>),
    Network(String),
}

/// Read a body of at most `limit` bytes; a larger one is refused as soon as its size shows.
async fn read_bounded(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(ReadError::TooLarge(Some(len)));
    }
    let mut body = Vec::with_capacity(resp.content_length().map_or(0, |l| l as usize).min(limit));
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ReadError::Network(format!("reading the body: {}", describe_reqwest(&e))))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge(None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Read at most `limit` bytes of a body and drop the rest (for error answers).
async fn read_truncated(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&e))? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_parse_to_urls() {
        let plain = vec!["127.0.0.1:5000".to_string()];
        let r = Repo::parse("127.0.0.1:5000/demo/app", "v1", &plain).unwrap();
        assert_eq!(r.base, "http://127.0.0.1:5000/v2/demo/app");
        assert_eq!(r.image("v1-arm64"), "127.0.0.1:5000/demo/app:v1-arm64");
        let r = Repo::parse(
            "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/vecoli",
            "3f2a9c1",
            &plain,
        )
        .unwrap();
        assert_eq!(
            r.base,
            "https://123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/v2/vecoli"
        );
        assert_eq!(ecr_region(&r.api_host).as_deref(), Some("us-gov-west-1"));
        let r = Repo::parse("ubuntu", "24.04", &plain).unwrap();
        assert_eq!(r.base, "https://index.docker.io/v2/library/ubuntu");
        for bad in [
            "127.0.0.1:5000/demo:v1",
            "127.0.0.1:5000/demo@sha256:abc",
            "UPPER/case",
            "",
        ] {
            let e = Repo::parse(bad, "v1", &plain).unwrap_err();
            assert_eq!(e.label(), "InvalidReference", "{bad}");
        }
        assert!(Repo::parse("127.0.0.1:5000/demo", "bad tag", &plain).is_err());
    }

    /// A realm on a loopback address (by IP or by a name that resolves there) is refused when
    /// loopback is not allowed, even when its host is listed and plain http is allowed for it;
    /// the listener standing there gets no connection. (An integration test cannot show this: its
    /// registry is on loopback too, so loopback must be allowed there.)
    #[tokio::test]
    async fn a_loopback_realm_is_refused_without_allow_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let transport = Transport::new(
            RegistryOptions {
                auth: RegistryAuth::basic("registry.example.com", "u", "secret"),
                plain_http_hosts: vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")],
                auth_hosts: vec![
                    AuthHost::parse("registry.example.com=127.0.0.1").unwrap(),
                    AuthHost::parse("registry.example.com=localhost").unwrap(),
                ],
                allow_loopback: false,
                observer: None,
            },
            RetryPolicy::default(),
        );
        let repo = Repo::parse("registry.example.com/app", "v1", &[]).unwrap();
        let req = Request {
            method: Method::GET,
            repo: &repo,
            object: RegistryObject::Manifest,
            reference: "v1",
            image: "registry.example.com/app:v1",
            operation: "reading",
            push: false,
            accept: None,
            content_type: None,
            body: None,
            limit: 1024,
            what: "manifest",
        };
        for (realm, why) in [
            (
                format!("http://127.0.0.1:{port}/token"),
                "127.0.0.1 is a loopback address",
            ),
            (format!("http://localhost:{port}/token"), "localhost resolves only to "),
        ] {
            let e = match transport.fetch_token(&req, &realm, None, "repository:app:pull").await {
                Err(Fail::Fatal(e)) => e,
                Err(Fail::Retry(m, _)) => panic!("{realm}: retried: {m}"),
                Ok(_) => panic!("{realm}: a token"),
            };
            assert_eq!(e.label(), "RegistryAuthFailed", "{realm}: {e}");
            assert!(!e.is_transient());
            let message = e.to_string();
            assert!(message.contains(why), "{realm}: {message}");
            assert!(message.contains("--registry-allow-loopback"), "{message}");
            assert!(!message.contains("secret"), "{message}");
            let accepted = listener.accept();
            assert!(
                matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{realm}: the listener got a connection: {accepted:?}"
            );
        }
    }
}
