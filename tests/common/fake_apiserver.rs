//! A fake Kubernetes API server for tests: a real HTTP/1.1 server on 127.0.0.1 that keeps objects
//! of any resource in memory and answers the REST verbs kube-rs uses, in JSON, as the real one does.
//!
//! Paths: `/api/v1/[namespaces/{ns}/]{plural}[/{name}[/status]]` (the core group) and
//! `/apis/{group}/{version}/[namespaces/{ns}/]{plural}[/{name}[/status]]`.
//! - GET one (404 as a `Status` with reason `NotFound`), LIST (`kind: <Kind>List`,
//!   `metadata.resourceVersion`, `labelSelector` terms `k=v`, `k==v`, `k!=v`, `k`, `!k`,
//!   `fieldSelector` terms `path=v`, `path==v`, `path!=v` on dotted paths such as `spec.nodeName`).
//!   For resources with a known list of selectable fields ([`SELECTABLE_FIELDS`]) a field selector
//!   on any other path is refused with 400, as the real API server refuses it.
//! - POST create: 409 `AlreadyExists`; sets `uid`, `resourceVersion`, `creationTimestamp`,
//!   `generation` (1) and the namespace of the path; `generateName` is honoured.
//! - PUT replace: 404 when absent, 409 `Conflict` when the body's `resourceVersion` is stale; a
//!   change outside `metadata` and `status` bumps `generation`. PUT on `/status` replaces only the
//!   status.
//! - PATCH: JSON merge patch (`application/merge-patch+json`; strategic merge patch is treated as a
//!   merge patch, which is right for the plain objects tests use) and server-side apply
//!   (`application/apply-patch+yaml`, JSON body: merged onto the object, or created).
//! - DELETE one (answers the object), DELETE collection (with the same selectors; answers the list).
//! - `watch=true` is not supported (answered 405).
//!
//! Test helpers: [`FakeApiServer::start`] and [`FakeApiServer::url`], [`FakeApiServer::insert`] to
//! seed objects (e.g. ResourceClaims with an allocation), [`FakeApiServer::objects`] to read them,
//! [`FakeApiServer::requests`] for the log of requests, and [`FakeApiServer::fail_next`] and
//! [`FakeApiServer::fail_next_method`] to make the next requests fail (retry tests).
//!
//! Used by the root package's tests (`mod common;`) and by node-agent's tests through
//! `#[path = "../../tests/common/fake_apiserver.rs"] mod fake_apiserver;`: it needs only axum,
//! serde_json and tokio.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Field selectors the real API server supports per resource (`<group>/<plural>`, core group
/// `""`), beyond `metadata.name` and `metadata.namespace` which every resource supports.
/// ResourceSlices: `spec.nodeName`, `spec.driver` and `spec.pool.name`
/// (pkg/registry/resource/resourceslice/strategy.go, `ToSelectableFields`, since 1.30).
pub const SELECTABLE_FIELDS: &[(&str, &[&str])] = &[
    (
        "resource.k8s.io/resourceslices",
        &["spec.nodeName", "spec.driver", "spec.pool.name"],
    ),
    (
        "/pods",
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    ),
    ("/nodes", &["spec.unschedulable"]),
];

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query (still percent-encoded), empty when none.
    pub query: String,
}

/// Where a resource lives: `api_version` is `v1` for the core group, else `group/version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ResourceKey {
    api_version: String,
    plural: String,
}

#[derive(Default)]
struct State {
    /// resource -> (namespace or "", name) -> object.
    objects: BTreeMap<ResourceKey, BTreeMap<(String, String), Value>>,
    /// Kind of each resource seen (for list kinds).
    kinds: BTreeMap<ResourceKey, String>,
    resource_version: u64,
    uid: u64,
    log: Vec<Request>,
    /// Status codes the next requests (of a method, or any) get instead of an answer.
    faults: VecDeque<(Option<String>, u16)>,
}

/// The fake API server; it stops when dropped.
pub struct FakeApiServer {
    url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                async move { handle(&st, method, uri, headers, body) }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// The server's URL (`http://127.0.0.1:<port>`), for `kube::Config::new`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube-style client config URL parsed (for `kube::Config::new(server.uri())`).
    pub fn uri(&self) -> axum::http::Uri {
        self.url.parse().expect("own URL parses")
    }

    /// Stores `obj` (with `apiVersion`, `kind`, `metadata.name`, and `metadata.namespace` for
    /// namespaced resources) as if created, replacing any object of that name. Returns it as stored.
    pub fn insert(&self, obj: Value) -> Value {
        let api_version = obj["apiVersion"]
            .as_str()
            .expect("insert: apiVersion")
            .to_string();
        let kind = obj["kind"].as_str().expect("insert: kind").to_string();
        let key = ResourceKey {
            api_version,
            plural: plural_of(&kind),
        };
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("insert: metadata.name")
            .to_string();
        let mut st = self.state.lock().unwrap();
        let mut obj = obj;
        st.stamp_new(&mut obj, &ns);
        st.kinds.insert(key.clone(), kind);
        st.objects
            .entry(key)
            .or_default()
            .insert((ns, name), obj.clone());
        obj
    }

    /// Every stored object of a resource (`api_version` as in the objects: `"v1"`,
    /// `"resource.k8s.io/v1"`), ordered by namespace and name.
    pub fn objects(&self, api_version: &str, plural: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.objects
            .get(&ResourceKey {
                api_version: api_version.to_string(),
                plural: plural.to_string(),
            })
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// The next `count` requests fail with `code` (a `Status` body) and change nothing.
    pub fn fail_next(&self, count: usize, code: u16) {
        let mut st = self.state.lock().unwrap();
        st.faults.extend(std::iter::repeat_n((None, code), count));
    }

    /// The next `count` requests of `method` (`"PUT"`, ...) fail with `code`; others pass.
    pub fn fail_next_method(&self, method: &str, count: usize, code: u16) {
        let mut st = self.state.lock().unwrap();
        st.faults
            .extend(std::iter::repeat_n((Some(method.to_string()), code), count));
    }

    /// The server's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.lock().unwrap().resource_version
    }
}

/// The plural resource name of a kind (`ResourceSlice` -> `resourceslices`,
/// `DeviceClass` -> `deviceclasses`, `Policy` -> `policies`).
pub fn plural_of(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with('s') || k.ends_with('x') || k.ends_with("ch") || k.ends_with("sh") {
        format!("{k}es")
    } else if let Some(stem) = k
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

/// Kinds of resources tests use before any object of them exists (for list kinds).
fn known_kind(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "resourceslices" => "ResourceSlice",
        "resourceclaims" => "ResourceClaim",
        "resourceclaimtemplates" => "ResourceClaimTemplate",
        "deviceclasses" => "DeviceClass",
        "pods" => "Pod",
        "nodes" => "Node",
        "namespaces" => "Namespace",
        "configmaps" => "ConfigMap",
        _ => return None,
    })
}

/// What a request's path names.
struct Target {
    key: ResourceKey,
    /// The group without version, `""` for the core group (for Status details and field tables).
    group: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), String::new(), rest),
        ["apis", group, version, rest @ ..] => {
            (format!("{group}/{version}"), group.to_string(), rest)
        }
        _ => return None,
    };
    // `namespaces/{ns}/{plural}...` is namespaced; `namespaces[/{name}]` alone is the Namespace
    // resource itself.
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        r => (None, r),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    if plural.is_empty() || name.as_deref() == Some("") {
        return None;
    }
    Some(Target {
        key: ResourceKey {
            api_version,
            plural: plural.to_string(),
        },
        group,
        namespace,
        name,
        subresource,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn status(code: u16, reason: &str, message: String, t: Option<&Target>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(t) = t {
        body["details"] = json!({
            "name": t.name.clone().unwrap_or_default(),
            "group": t.group,
            "kind": t.key.plural,
        });
    }
    respond(code, &body)
}

fn respond(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response()
}

/// A `k=v` style selector term.
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
}

fn parse_selector(s: &str, allow_exists: bool) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    for raw in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let t = if let Some((k, v)) = raw.split_once("!=") {
            Term::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = raw.split_once("==") {
            Term::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = raw.split_once('=') {
            Term::Eq(k.trim().into(), v.trim().into())
        } else if !allow_exists {
            return Err(format!("invalid selector term {raw:?}"));
        } else if let Some(k) = raw.strip_prefix('!') {
            Term::NotExists(k.trim().into())
        } else if raw.contains([' ', '(']) {
            return Err(format!(
                "set-based selector {raw:?} is not supported by the fake"
            ));
        } else {
            Term::Exists(raw.into())
        };
        terms.push(t);
    }
    Ok(terms)
}

fn field_value(obj: &Value, path: &str) -> Option<String> {
    let v = path.split('.').try_fold(obj, |v, seg| v.get(seg))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn matches(obj: &Value, labels: &[Term], fields: &[Term]) -> bool {
    let label = |k: &str| obj["metadata"]["labels"][k].as_str().map(str::to_string);
    let labels_ok = labels.iter().all(|t| match t {
        Term::Eq(k, v) => label(k).as_deref() == Some(v.as_str()),
        Term::Ne(k, v) => label(k).as_deref() != Some(v.as_str()),
        Term::Exists(k) => label(k).is_some(),
        Term::NotExists(k) => label(k).is_none(),
    });
    // A field that is absent reads as "" (the API server's field sets hold every selectable field).
    let field = |p: &str| field_value(obj, p).unwrap_or_default();
    let fields_ok = fields.iter().all(|t| match t {
        Term::Eq(p, v) => field(p) == *v,
        Term::Ne(p, v) => field(p) != *v,
        Term::Exists(_) | Term::NotExists(_) => false,
    });
    labels_ok && fields_ok
}

/// RFC 3339 UTC time, seconds (Kubernetes `Time`).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("just made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The object without `metadata` and `status`: what `generation` counts changes of.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

impl State {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Sets what the API server sets on create.
    fn stamp_new(&mut self, obj: &mut Value, ns: &str) {
        self.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid);
        let rv = self.next_rv();
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let m = &mut obj["metadata"];
        m["uid"] = json!(uid);
        m["resourceVersion"] = json!(rv);
        m["creationTimestamp"] = json!(now_rfc3339());
        m["generation"] = json!(1);
        if !ns.is_empty() {
            m["namespace"] = json!(ns);
        }
    }

    fn kind_of(&self, key: &ResourceKey) -> String {
        self.kinds
            .get(key)
            .cloned()
            .or_else(|| known_kind(&key.plural).map(str::to_string))
            .unwrap_or_else(|| "Unknown".to_string())
    }
}

// The error side of the helpers is the answer itself (a `Response`), big and short-lived.
#[allow(clippy::result_large_err)]
fn handle(
    st: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    st.log.push(Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
    });
    let fault = st
        .faults
        .iter()
        .position(|(m, _)| m.as_deref().is_none_or(|m| m == method.as_str()));
    if let Some((_, code)) = fault.and_then(|i| st.faults.remove(i)) {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Unknown",
        };
        return status(code, reason, format!("injected failure ({code})"), None);
    }
    let Some(t) = parse_path(&path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find {path}"),
            None,
        );
    };
    let params = query_params(&query);
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return status(
            405,
            "MethodNotAllowed",
            "watch is not supported by the fake API server".into(),
            Some(&t),
        );
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let parse_body = || -> Result<Value, Response> {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| status(400, "BadRequest", format!("body is not JSON: {e}"), None))
    };
    let selectors = || -> Result<(Vec<Term>, Vec<Term>), Response> {
        let labels = parse_selector(params.get("labelSelector").map_or("", String::as_str), true)
            .map_err(|e| status(400, "BadRequest", e, Some(&t)))?;
        let fields = parse_selector(
            params.get("fieldSelector").map_or("", String::as_str),
            false,
        )
        .map_err(|e| status(400, "BadRequest", e, Some(&t)))?;
        let table_key = format!("{}/{}", t.group, t.key.plural);
        let allowed = SELECTABLE_FIELDS
            .iter()
            .find(|(k, _)| *k == table_key)
            .map(|(_, f)| *f);
        for f in &fields {
            let (Term::Eq(p, _) | Term::Ne(p, _) | Term::Exists(p) | Term::NotExists(p)) = f;
            let generic = p == "metadata.name" || p == "metadata.namespace";
            if let Some(allowed) = allowed
                && !generic
                && !allowed.contains(&p.as_str())
            {
                return Err(status(
                    400,
                    "BadRequest",
                    format!("field label not supported: {p}"),
                    Some(&t),
                ));
            }
        }
        Ok((labels, fields))
    };
    let name = t.name.clone();
    let id = (ns.clone(), name.clone().unwrap_or_default());

    match (method.as_str(), name.is_some()) {
        ("GET", true) => {
            let obj = st.objects.get(&t.key).and_then(|m| m.get(&id)).cloned();
            match obj {
                Some(o) => respond(200, &o),
                None => not_found(&t),
            }
        }
        ("GET", false) => {
            let (labels, fields) = match selectors() {
                Ok(s) => s,
                Err(r) => return r,
            };
            let items: Vec<Value> = st
                .objects
                .get(&t.key)
                .map(|m| {
                    m.iter()
                        .filter(|((ons, _), _)| t.namespace.is_none() || *ons == ns)
                        .map(|(_, o)| o)
                        .filter(|o| matches(o, &labels, &fields))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let list = json!({
                "kind": format!("{}List", st.kind_of(&t.key)),
                "apiVersion": t.key.api_version,
                "metadata": {"resourceVersion": st.resource_version.to_string()},
                "items": items,
            });
            respond(200, &list)
        }
        ("POST", false) => {
            let mut obj = match parse_body() {
                Ok(o) => o,
                Err(r) => return r,
            };
            let name = match obj["metadata"]["name"].as_str() {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => match obj["metadata"]["generateName"].as_str() {
                    Some(g) => format!("{g}{:05x}", st.uid + 1),
                    None => {
                        return status(
                            422,
                            "Invalid",
                            "metadata.name: Required value".into(),
                            Some(&t),
                        );
                    }
                },
            };
            obj["metadata"]["name"] = json!(name);
            if let Some(kind) = obj["kind"].as_str() {
                let kind = kind.to_string();
                st.kinds.insert(t.key.clone(), kind);
            }
            let id = (ns.clone(), name.clone());
            if st.objects.get(&t.key).is_some_and(|m| m.contains_key(&id)) {
                let mut tt = t;
                tt.name = Some(name.clone());
                return status(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", tt.key.plural),
                    Some(&tt),
                );
            }
            if params.contains_key("dryRun") {
                return respond(201, &obj);
            }
            st.stamp_new(&mut obj, &ns);
            st.objects
                .entry(t.key.clone())
                .or_default()
                .insert(id, obj.clone());
            respond(201, &obj)
        }
        ("PUT", true) => {
            let mut obj = match parse_body() {
                Ok(o) => o,
                Err(r) => return r,
            };
            let Some(old) = st.objects.get(&t.key).and_then(|m| m.get(&id)).cloned() else {
                return not_found(&t);
            };
            if obj["metadata"]["name"]
                .as_str()
                .is_some_and(|n| Some(n) != name.as_deref())
            {
                return status(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL".into(),
                    Some(&t),
                );
            }
            if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
                && !rv.is_empty()
                && Some(rv) != old["metadata"]["resourceVersion"].as_str()
            {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                         please apply your changes to the latest version and try again",
                        t.key.plural, id.1
                    ),
                    Some(&t),
                );
            }
            let new = if t.subresource.as_deref() == Some("status") {
                let mut n = old.clone();
                n["status"] = obj["status"].take();
                n
            } else if t.subresource.is_some() {
                return not_found(&t);
            } else {
                // What the server owns stays; status is not changed through the main resource
                // only for resources with a status subresource, which the fake does not track.
                for k in ["uid", "creationTimestamp", "generation"] {
                    obj["metadata"][k] = old["metadata"][k].clone();
                }
                if !ns.is_empty() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                if spec_part(&obj) != spec_part(&old) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    obj["metadata"]["generation"] = json!(g);
                }
                obj
            };
            store_update(&mut st, &t, id, new)
        }
        ("PATCH", true) => {
            let patch = match parse_body() {
                Ok(o) => o,
                Err(r) => return r,
            };
            let old = st.objects.get(&t.key).and_then(|m| m.get(&id)).cloned();
            let apply = content_type.starts_with("application/apply-patch");
            let merge = content_type.starts_with("application/merge-patch+json")
                || content_type.starts_with("application/strategic-merge-patch+json");
            if !apply && !merge {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("patch type {content_type} is not supported by the fake"),
                    Some(&t),
                );
            }
            let Some(mut obj) = old.clone() else {
                if apply {
                    let mut obj = patch;
                    obj["metadata"]["name"] = json!(id.1);
                    st.stamp_new(&mut obj, &ns);
                    st.objects
                        .entry(t.key.clone())
                        .or_default()
                        .insert(id, obj.clone());
                    return respond(201, &obj);
                }
                return not_found(&t);
            };
            let patch = if t.subresource.as_deref() == Some("status") {
                json!({"status": patch.get("status").cloned().unwrap_or(Value::Null)})
            } else {
                patch
            };
            merge_patch(&mut obj, &patch);
            if let Some(old) = &old {
                for k in ["uid", "creationTimestamp", "name"] {
                    obj["metadata"][k] = old["metadata"][k].clone();
                }
                if spec_part(&obj) != spec_part(old) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    obj["metadata"]["generation"] = json!(g);
                }
            }
            store_update(&mut st, &t, id, obj)
        }
        ("DELETE", true) => {
            let removed = st.objects.get_mut(&t.key).and_then(|m| m.remove(&id));
            match removed {
                Some(o) => {
                    st.next_rv();
                    respond(200, &o)
                }
                None => not_found(&t),
            }
        }
        ("DELETE", false) => {
            let (labels, fields) = match selectors() {
                Ok(s) => s,
                Err(r) => return r,
            };
            let kind = st.kind_of(&t.key);
            let mut removed = Vec::new();
            if let Some(m) = st.objects.get_mut(&t.key) {
                let gone: Vec<(String, String)> = m
                    .iter()
                    .filter(|((ons, _), _)| t.namespace.is_none() || *ons == ns)
                    .filter(|(_, o)| matches(o, &labels, &fields))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    if let Some(o) = m.remove(&k) {
                        removed.push(o);
                    }
                }
            }
            if !removed.is_empty() {
                st.next_rv();
            }
            let list = json!({
                "kind": format!("{kind}List"),
                "apiVersion": t.key.api_version,
                "metadata": {"resourceVersion": st.resource_version.to_string()},
                "items": removed,
            });
            respond(200, &list)
        }
        (m, _) => status(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {path}"),
            Some(&t),
        ),
    }
}

fn not_found(t: &Target) -> Response {
    status(
        404,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            t.key.plural,
            t.name.clone().unwrap_or_default()
        ),
        Some(t),
    )
}

fn store_update(st: &mut State, t: &Target, id: (String, String), mut obj: Value) -> Response {
    let rv = st.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv);
    st.objects
        .entry(t.key.clone())
        .or_default()
        .insert(id, obj.clone());
    respond(200, &obj)
}
