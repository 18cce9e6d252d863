//! A stateful in-memory Kubernetes API server for the controller's tests: an axum `Router` (a
//! tower `Service`) behind `kube::Client::new`, so no cluster is needed.
//!
//! It stores objects by (group, resource, namespace, name) and serves what the controller, its
//! watches, kube-runtime's event recorder and the leader election send: GET, LIST (label selectors),
//! WATCH (from a resourceVersion, streamed), POST, and PATCH as server-side apply (with field
//! ownership of a Lease's holder, so two electors conflict as on a real server), JSON merge and
//! strategic merge (treated as merge; both conflict on a stale `metadata.resourceVersion`) and
//! JSON patch (the finalizer). Like the API server it bumps `generation` on spec changes, removes
//! an object whose deletion waits on no finalizer, and answers 404 for builds until the CRD is
//! "installed". Lease writes can be made to fail (500) or hang, for a leader cut off from it.
//!
//! Every request is recorded as (apiGroup, resource[/subresource], verb) for the RBAC check; a
//! server-side apply that creates its object counts as `create` too, as the API server authorizes
//! it.

// Test tooling: a broken fake must stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

/// (apiGroup, resource or resource/subresource, verb)
pub type Permission = (String, String, String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(group: &str, resource: &str, namespace: &str, name: &str) -> Key {
        Key {
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn build(namespace: &str, name: &str) -> Key {
        Key::new("multiarch.dev", "multiarchbuilds", namespace, name)
    }

    pub fn job(namespace: &str, name: &str) -> Key {
        Key::new("batch", "jobs", namespace, name)
    }
}

struct Change {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    log: Vec<Change>,
    seen: BTreeSet<Permission>,
    /// Every request, in order: (apiGroup, resource[/subresource], verb) and the object's name.
    requests: Vec<(Permission, String)>,
    status_writes: HashMap<Key, usize>,
    /// The field manager owning each Lease's spec.holderIdentity.
    holder_owner: HashMap<Key, String>,
    /// Refuse (HTTP 500) status writes that record a job id, as a crash right after SubmitJob would.
    refuse_job_ids: bool,
    /// Status writes refused so.
    refused: usize,
    /// Writes another writer makes just before the next status write to a key arrives.
    races: HashMap<Key, Race>,
    /// Lease writes failed by [`FakeKube::refuse_lease_writes`] or [`FakeKube::hang_lease_writes`].
    lease_writes_failed: usize,
}

/// How Lease writes (create, patch, update) are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseWrites {
    Served,
    /// 500 at once.
    Refused,
    /// No answer until healed, then 500.
    Hung,
}

/// A change to a stored object, made by "another writer".
type Race = Box<dyn FnOnce(&mut Value) + Send>;

struct Shared {
    inner: Mutex<Inner>,
    /// The latest resourceVersion, for watches to wait on.
    latest: tokio::sync::watch::Sender<u64>,
    crd_installed: AtomicBool,
    lease_writes: tokio::sync::watch::Sender<LeaseWrites>,
}

/// The fake API server; clones share it.
#[derive(Clone)]
pub struct FakeKube {
    shared: Arc<Shared>,
}

fn kind_of(group: &str, resource: &str) -> (&'static str, &'static str) {
    match (group, resource) {
        ("multiarch.dev", "multiarchbuilds") => ("multiarch.dev/v1alpha1", "MultiArchBuild"),
        ("batch", "jobs") => ("batch/v1", "Job"),
        ("", "configmaps") => ("v1", "ConfigMap"),
        ("events.k8s.io", "events") => ("events.k8s.io/v1", "Event"),
        ("coordination.k8s.io", "leases") => ("coordination.k8s.io/v1", "Lease"),
        ("multiarch.dev", "multiarchbuildpolicies") => ("multiarch.dev/v1alpha1", "MultiArchBuildPolicy"),
        ("", "namespaces") => ("v1", "Namespace"),
        _ => ("v1", "Unknown"),
    }
}

impl FakeKube {
    /// A server with the MultiArchBuild CRD installed.
    pub fn new() -> FakeKube {
        let fake = FakeKube::without_crd();
        fake.install_crd();
        fake
    }

    /// A server where the CRD is not installed yet: builds are 404.
    pub fn without_crd() -> FakeKube {
        FakeKube {
            shared: Arc::new(Shared {
                inner: Mutex::default(),
                latest: tokio::sync::watch::channel(0).0,
                crd_installed: AtomicBool::new(false),
                lease_writes: tokio::sync::watch::channel(LeaseWrites::Served).0,
            }),
        }
    }

    pub fn install_crd(&self) {
        self.shared.crd_installed.store(true, Ordering::SeqCst);
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self.clone())
    }

    /// Stores an object as a client's POST would, without recording a permission.
    pub fn create(&self, group: &str, resource: &str, object: Value) -> Value {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let mut inner = self.lock();
        match create_in(&mut inner, group, resource, &namespace, object) {
            Ok(created) => {
                drop(inner);
                self.notify();
                created
            }
            Err(_) => panic!("{resource} already exists"),
        }
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// Changes an object as a user's edit would (generation bumps on a spec change).
    pub fn edit(&self, key: &Key, change: impl FnOnce(&mut Value)) {
        let mut inner = self.lock();
        let mut object = inner.objects.get(key).cloned().expect("the object to edit");
        change(&mut object);
        store(&mut inner, key, object);
        drop(inner);
        self.notify();
    }

    /// Deletes an object as `kubectl delete` would: at once without finalizers, else it gets a
    /// deletionTimestamp and goes when the last finalizer is removed.
    pub fn delete(&self, key: &Key) {
        self.edit(key, |object| {
            object["metadata"]["deletionTimestamp"] = now().into();
        });
    }

    /// Status writes received for a build (every PATCH of its status subresource).
    pub fn status_writes(&self, namespace: &str, name: &str) -> usize {
        self.lock()
            .status_writes
            .get(&Key::build(namespace, name))
            .copied()
            .unwrap_or(0)
    }

    /// Every events.k8s.io Event stored (one per event series).
    pub fn events(&self) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.group == "events.k8s.io")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The (reason, type) of each event about an object (by kind and name), oldest first.
    pub fn events_about(&self, kind: &str, name: &str) -> Vec<(String, String, String)> {
        let mut events: Vec<Value> = self
            .events()
            .into_iter()
            .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
            .collect();
        events.sort_by_key(|e| e["eventTime"].as_str().unwrap_or_default().to_string());
        events
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// From now on, answer 500 to every status write that records a Batch job id (the state of a
    /// controller that dies between SubmitJob and the status write), until [`Self::heal`].
    pub fn refuse_job_ids(&self) {
        self.lock().refuse_job_ids = true;
    }

    pub fn heal(&self) {
        self.lock().refuse_job_ids = false;
    }

    /// Makes `change` to the stored object (another writer) right before the next status write to
    /// `key` is handled, so that write was planned from an older resourceVersion.
    pub fn race_next_status_write(&self, key: &Key, change: impl FnOnce(&mut Value) + Send + 'static) {
        self.lock().races.insert(key.clone(), Box::new(change));
    }

    /// Status writes refused by [`Self::refuse_job_ids`].
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// From now on, answer 500 to every write of a Lease (a leader that can read but not renew),
    /// until [`Self::heal_leases`].
    pub fn refuse_lease_writes(&self) {
        self.shared.lease_writes.send_replace(LeaseWrites::Refused);
    }

    /// From now on, never answer a write of a Lease (an API server that stopped answering) until
    /// [`Self::heal_leases`], which answers the writes still waiting with 500.
    pub fn hang_lease_writes(&self) {
        self.shared.lease_writes.send_replace(LeaseWrites::Hung);
    }

    pub fn heal_leases(&self) {
        self.shared.lease_writes.send_replace(LeaseWrites::Served);
    }

    /// Lease writes refused or left unanswered so far.
    pub fn lease_writes_failed(&self) -> usize {
        self.lock().lease_writes_failed
    }

    /// Every request so far, in order: ((apiGroup, resource[/subresource], verb), name or "").
    pub fn requests(&self) -> Vec<(Permission, String)> {
        self.lock().requests.clone()
    }

    /// The permissions the requests needed so far.
    pub fn seen(&self) -> BTreeSet<Permission> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self) {
        let rv = self.lock().rv;
        self.shared.latest.send_replace(rv);
    }
}

impl Default for FakeKube {
    fn default() -> Self {
        FakeKube::new()
    }
}

fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn uid() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(..0x1000),
        fastrand::u64(..0x1_0000_0000_0000)
    )
}

/// Stores a new object; `Err` when the name is taken.
fn create_in(inner: &mut Inner, group: &str, resource: &str, namespace: &str, mut object: Value) -> Result<Value, ()> {
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_string(),
        None => {
            let prefix = object["metadata"]["generateName"]
                .as_str()
                .unwrap_or("obj-")
                .to_string();
            format!("{prefix}{}", fastrand::u32(..))
        }
    };
    let key = Key::new(group, resource, namespace, &name);
    if inner.objects.contains_key(&key) {
        return Err(());
    }
    let (api_version, kind) = kind_of(group, resource);
    object["apiVersion"] = api_version.into();
    object["kind"] = kind.into();
    let meta = &mut object["metadata"];
    meta["name"] = name.into();
    meta["namespace"] = namespace.into();
    if meta["uid"].is_null() {
        meta["uid"] = uid().into();
    }
    meta["creationTimestamp"] = now().into();
    meta["generation"] = 1.into();
    inner.rv += 1;
    meta["resourceVersion"] = inner.rv.to_string().into();
    inner.log.push(Change {
        rv: inner.rv,
        key: key.clone(),
        kind: "ADDED",
        object: object.clone(),
    });
    inner.objects.insert(key, object.clone());
    Ok(object)
}

/// Replaces a stored object with `next` as the API server would: generation bumps when the spec
/// changed, resourceVersion when anything did, and an object being deleted goes once it has no
/// finalizers. Returns the object as stored (or as last seen when it was removed).
fn store(inner: &mut Inner, key: &Key, mut next: Value) -> Value {
    let Some(previous) = inner.objects.get(key).cloned() else {
        return next;
    };
    // Identity is not the client's to change.
    for field in ["uid", "creationTimestamp", "name", "namespace"] {
        next["metadata"][field] = previous["metadata"][field].clone();
    }
    next["metadata"]["resourceVersion"] = previous["metadata"]["resourceVersion"].clone();
    next["metadata"]["generation"] = previous["metadata"]["generation"].clone();
    if previous["metadata"]["deletionTimestamp"].is_string() {
        next["metadata"]["deletionTimestamp"] = previous["metadata"]["deletionTimestamp"].clone();
    }
    if next == previous {
        return next;
    }
    if next["spec"] != previous["spec"] {
        let generation = previous["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] = (generation + 1).into();
    }
    inner.rv += 1;
    next["metadata"]["resourceVersion"] = inner.rv.to_string().into();
    let finalizers_left = next["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    let gone = next["metadata"]["deletionTimestamp"].is_string() && !finalizers_left;
    let kind = if gone { "DELETED" } else { "MODIFIED" };
    inner.log.push(Change {
        rv: inner.rv,
        key: key.clone(),
        kind,
        object: next.clone(),
    });
    if gone {
        inner.objects.remove(key);
    } else {
        inner.objects.insert(key.clone(), next.clone());
    }
    next
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().unwrap();
            for (name, value) in fields {
                if value.is_null() {
                    object.remove(name);
                } else {
                    merge(object.entry(name.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

struct Route {
    group: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (resource, None, None),
        [resource, name] => (resource, Some(name.to_string()), None),
        [resource, name, sub] => (resource, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Route {
        group,
        namespace,
        resource: resource.to_string(),
        name,
        subresource,
    })
}

/// The query parameters, percent-decoded (a malformed query reads as none).
fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated.
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn respond(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(code: u16, reason: &str, message: &str) -> Response {
    respond(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

async fn handle(State(fake): State<FakeKube>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let Some(route) = route(parts.uri.path()) else {
        return failure(404, "NotFound", &format!("no route {}", parts.uri.path()));
    };
    let query = query(&parts.uri);
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&parts.method, &route.name) {
        (&Method::GET, None) if watching => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PATCH, _) => "patch",
        (&Method::PUT, _) => "update",
        (&Method::DELETE, _) => "delete",
        _ => "unknown",
    };
    let resource = match &route.subresource {
        Some(sub) => format!("{}/{sub}", route.resource),
        None => route.resource.clone(),
    };
    {
        let mut inner = fake.lock();
        inner.seen.insert((route.group.clone(), resource.clone(), verb.into()));
        let name = route.name.clone().unwrap_or_default();
        inner
            .requests
            .push(((route.group.clone(), resource, verb.into()), name));
    }
    if route.resource == "multiarchbuilds" && !fake.shared.crd_installed.load(Ordering::SeqCst) {
        return failure(404, "NotFound", "the server could not find the requested resource");
    }
    if route.resource == "leases"
        && matches!(verb, "create" | "patch" | "update")
        && let Some(response) = lease_write_outage(&fake).await
    {
        return response;
    }
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = match verb {
        "list" => list(&fake, &route, &query),
        "watch" => return watch(&fake, &route, &query),
        "get" => get(&fake, &route),
        "create" => post(&fake, &route, &body),
        "patch" => patch(&fake, &route, &query, &content_type, &body),
        "delete" => delete(&fake, &route, &body),
        _ => failure(405, "MethodNotAllowed", &format!("{verb} is not served by the fake")),
    };
    fake.notify();
    response
}

/// The answer to a Lease write while they fail ([`FakeKube::refuse_lease_writes`],
/// [`FakeKube::hang_lease_writes`]); `None` when they are served.
async fn lease_write_outage(fake: &FakeKube) -> Option<Response> {
    let mut writes = fake.shared.lease_writes.subscribe();
    let mode = *writes.borrow_and_update();
    if mode == LeaseWrites::Served {
        return None;
    }
    fake.lock().lease_writes_failed += 1;
    if mode == LeaseWrites::Hung {
        // A client that gave up meanwhile has dropped this request already.
        let _ = writes.wait_for(|mode| *mode != LeaseWrites::Hung).await;
    }
    Some(failure(500, "InternalError", "Lease writes fail in this test"))
}

fn key_of(route: &Route) -> Key {
    Key::new(
        &route.group,
        &route.resource,
        route.namespace.as_deref().unwrap_or_default(),
        route.name.as_deref().unwrap_or_default(),
    )
}

fn in_scope(route: &Route, selector: Option<&String>, key: &Key, object: &Value) -> bool {
    key.group == route.group
        && key.resource == route.resource
        && route.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
        && selector.is_none_or(|s| selects(s, object))
}

fn list(fake: &FakeKube, route: &Route, query: &HashMap<String, String>) -> Response {
    let inner = fake.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|(k, v)| in_scope(route, query.get("labelSelector"), k, v))
        .map(|(_, v)| v.clone())
        .collect();
    let (api_version, kind) = kind_of(&route.group, &route.resource);
    respond(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
    )
}

fn watch(fake: &FakeKube, route: &Route, query: &HashMap<String, String>) -> Response {
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let selector = query.get("labelSelector").cloned();
    let route = Route {
        group: route.group.clone(),
        namespace: route.namespace.clone(),
        resource: route.resource.clone(),
        name: None,
        subresource: None,
    };
    let latest = fake.shared.latest.subscribe();
    let state = (fake.clone(), route, selector, from, latest);
    let stream = futures::stream::unfold(state, |(fake, route, selector, mut cursor, mut latest)| async move {
        loop {
            latest.borrow_and_update();
            let (next, last) = {
                let inner = fake.lock();
                let next = inner
                    .log
                    .iter()
                    .filter(|c| c.rv > cursor)
                    .find(|c| in_scope(&route, selector.as_ref(), &c.key, &c.object))
                    .map(|c| (c.rv, json!({"type": c.kind, "object": c.object})));
                (next, inner.log.last().map_or(0, |c| c.rv))
            };
            match next {
                Some((rv, event)) => {
                    cursor = rv;
                    let mut line = serde_json::to_vec(&event).unwrap();
                    line.push(b'\n');
                    return Some((
                        Ok::<_, Infallible>(Bytes::from(line)),
                        (fake, route, selector, cursor, latest),
                    ));
                }
                None => {
                    // Nothing for this watch up to `last`: wait for the next change.
                    cursor = cursor.max(last);
                    if latest.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn get(fake: &FakeKube, route: &Route) -> Response {
    match fake.lock().objects.get(&key_of(route)) {
        Some(object) => respond(StatusCode::OK, object),
        None => failure(
            404,
            "NotFound",
            &format!("{} {:?} not found", route.resource, route.name),
        ),
    }
}

/// DELETE as the API server: a `preconditions.uid` that does not match is a 409; an object with
/// finalizers gets a deletionTimestamp, one without goes at once.
fn delete(fake: &FakeKube, route: &Route, body: &[u8]) -> Response {
    let key = key_of(route);
    let Some(object) = fake.get(&key) else {
        return failure(
            404,
            "NotFound",
            &format!("{} {:?} not found", route.resource, route.name),
        );
    };
    let options: Value = serde_json::from_slice(body).unwrap_or_default();
    let want_uid = &options["preconditions"]["uid"];
    if want_uid.is_string() && *want_uid != object["metadata"]["uid"] {
        return failure(
            409,
            "Conflict",
            "Precondition failed: UID in precondition does not match",
        );
    }
    if object["metadata"]["deletionTimestamp"].is_null() {
        fake.delete(&key);
    }
    respond(StatusCode::OK, &fake.get(&key).unwrap_or(object))
}

fn post(fake: &FakeKube, route: &Route, body: &[u8]) -> Response {
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return failure(400, "BadRequest", "not JSON");
    };
    let namespace = route.namespace.clone().unwrap_or_default();
    let mut inner = fake.lock();
    match create_in(&mut inner, &route.group, &route.resource, &namespace, object) {
        Ok(created) => respond(StatusCode::CREATED, &created),
        Err(()) => failure(409, "AlreadyExists", "already exists"),
    }
}

fn patch(fake: &FakeKube, route: &Route, query: &HashMap<String, String>, content_type: &str, body: &[u8]) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return failure(400, "BadRequest", "not JSON");
    };
    let key = key_of(route);
    let manager = query.get("fieldManager").cloned().unwrap_or_default();
    let force = query.get("force").is_some_and(|f| f == "true");
    let mut inner = fake.lock();
    let apply = content_type.starts_with("application/apply-patch");
    if route.subresource.as_deref() == Some("status") {
        *inner.status_writes.entry(key.clone()).or_default() += 1;
        let records_job_ids = patch["status"]["platforms"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["jobId"].is_string()));
        if inner.refuse_job_ids && records_job_ids {
            inner.refused += 1;
            return failure(500, "InternalError", "the status write was refused by the test");
        }
        if let Some(race) = inner.races.remove(&key)
            && let Some(mut other) = inner.objects.get(&key).cloned()
        {
            race(&mut other);
            store(&mut inner, &key, other);
        }
    }
    let Some(current) = inner.objects.get(&key).cloned() else {
        if apply && route.subresource.is_none() {
            // Server-side apply creates; the API server authorizes that as create.
            inner
                .seen
                .insert((route.group.clone(), route.resource.clone(), "create".into()));
            let namespace = route.namespace.clone().unwrap_or_default();
            return match create_in(&mut inner, &route.group, &route.resource, &namespace, patch) {
                Ok(created) => {
                    if route.resource == "leases" && created["spec"]["holderIdentity"].is_string() {
                        inner.holder_owner.insert(key, manager);
                    }
                    respond(StatusCode::CREATED, &created)
                }
                Err(()) => failure(409, "AlreadyExists", "already exists"),
            };
        }
        return failure(
            404,
            "NotFound",
            &format!("{} {:?} not found", route.resource, route.name),
        );
    };
    // A write that names a resourceVersion is a precondition, as on the API server.
    if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(expected)
    {
        return failure(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your \
                 changes to the latest version and try again",
                route.resource, route.name
            ),
        );
    }
    let mut next = current.clone();
    if route.subresource.as_deref() == Some("status") {
        if apply {
            next["status"] = patch["status"].clone();
        } else {
            merge(&mut next, &json!({"status": patch["status"]}));
        }
    } else if apply {
        if route.resource == "leases" {
            let applied = patch["spec"]["holderIdentity"].as_str();
            let holder = current["spec"]["holderIdentity"].as_str();
            let owner = inner.holder_owner.get(&key);
            if !force
                && let (Some(applied), Some(holder)) = (applied, holder)
                && applied != holder
                && owner != Some(&manager)
            {
                return failure(
                    409,
                    "Conflict",
                    &format!(
                        "Apply failed with 1 conflict: conflict with \"{}\": .spec.holderIdentity",
                        owner.cloned().unwrap_or_default()
                    ),
                );
            }
            if applied.is_some() {
                inner.holder_owner.insert(key.clone(), manager.clone());
            }
        }
        let mut applied = patch.clone();
        if let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        merge(&mut next, &applied);
    } else if content_type.starts_with("application/json-patch") {
        let Ok(mut operations) = serde_json::from_value::<json_patch::Patch>(patch) else {
            return failure(400, "BadRequest", "not a JSON patch");
        };
        // Like the API server's JSON patch library: testing a missing path for null passes.
        operations.0.retain(|op| match op {
            json_patch::PatchOperation::Test(t) => !(t.value.is_null() && next.pointer(t.path.as_str()).is_none()),
            _ => true,
        });
        if let Err(e) = json_patch::patch(&mut next, &operations) {
            return failure(422, "Invalid", &format!("the JSON patch does not apply: {e}"));
        }
    } else {
        // JSON merge patch, and strategic merge patch (only Leases get one: no lists to merge).
        let wanted = &patch["metadata"]["resourceVersion"];
        if wanted.is_string() && *wanted != current["metadata"]["resourceVersion"] {
            return failure(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            );
        }
        if route.resource == "leases" {
            match &patch["spec"]["holderIdentity"] {
                Value::String(_) => {
                    inner.holder_owner.insert(key.clone(), manager.clone());
                }
                Value::Null if patch["spec"].get("holderIdentity").is_some() => {
                    inner.holder_owner.remove(&key);
                }
                _ => {}
            }
        }
        merge(&mut next, &patch);
    }
    let stored = store(&mut inner, &key, next);
    respond(StatusCode::OK, &stored)
}
