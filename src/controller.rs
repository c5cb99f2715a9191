//! The reconciler: keeps each `OktaServiceToken`'s Secret holding a valid
//! token, renewing before expiry and backing off on failure.
//!
//! What to do is decided from the Secret's metadata (input hash, issue and
//! expiry times) and the status (failure count, next attempt), never from
//! the event that woke the reconciler: a status write or a Secret event
//! cannot cause a mint by itself, and a restart re-mints nothing fresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;

use crate::crd::{
    CONDITION_READY, CONDITION_RENEWAL_FAILING, OPERATOR_NAME, OktaServiceToken,
    OktaServiceTokenStatus, reason,
};
use crate::kms::KeyRef;
use crate::mint::{MintError, MintSpec, Minted, Minter};
use crate::okta::TokenError;
use crate::schedule::{self, FailureKind};
use crate::secret::{self, SecretState};

/// How long a configuration problem outside the spec (a foreign Secret) waits
/// before it is looked at again; spec changes are seen at once anyway.
const CONFLICT_RECHECK: Duration = Duration::from_secs(300);

/// Kubernetes caps an Event note at 1 KB.
const MAX_NOTE_CHARS: usize = 900;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the resource has no namespace or uid yet")]
    IncompleteObject,
}

/// What the reconciler needs: shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub minter: Minter,
    pub recorder: Recorder,
    /// Consecutive Kubernetes API failures per object, for error backoff.
    api_failures: Mutex<HashMap<ObjectRef<OktaServiceToken>, u32>>,
}

impl Context {
    pub fn new(client: Client, minter: Minter, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            minter,
            api_failures: Mutex::new(HashMap::new()),
        }
    }
}

/// The resource's spec, resolved into what the engine needs.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub mint: MintSpec,
    pub secret_name: String,
    pub renew_before: Option<Duration>,
    /// Changes exactly when a field that affects the token changes.
    pub input_hash: String,
}

/// Resolves and checks a spec. The CRD schema rejects most mistakes; this
/// catches the rest (and objects stored before a schema change).
pub fn resolve(token: &OktaServiceToken) -> Result<Resolved, String> {
    let spec = &token.spec;
    let token_url = spec.resolved_token_url().ok_or("set orgUrl or tokenUrl")?;
    let url =
        reqwest::Url::parse(&token_url).map_err(|e| format!("token URL {token_url:?}: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!("token URL {token_url:?} must use https"));
    }
    if spec.client_id.trim().is_empty() {
        return Err("clientId is empty".into());
    }
    if spec.scopes.is_empty()
        || spec
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err("scopes must be a non-empty list of scopes without spaces".into());
    }
    let renew_before = spec
        .renew_before
        .as_deref()
        .map(schedule::parse_duration)
        .transpose()
        .map_err(|e| e.to_string())?;
    let key = &spec.signing_key;
    let mint = MintSpec {
        client_id: spec.client_id.clone(),
        token_url,
        scopes: spec.scopes.clone(),
        key: KeyRef::new(key.kms_key_id.clone(), key.region.clone()),
        algorithm: key.algorithm.map(Into::into),
        kid: key.kid.clone(),
        assertion_lifetime: crate::assertion::DEFAULT_ASSERTION_LIFETIME,
    };
    let input_hash = input_hash(&mint);
    Ok(Resolved {
        secret_name: spec.secret_name.clone().unwrap_or_else(|| token.name_any()),
        renew_before,
        input_hash,
        mint,
    })
}

fn input_hash(mint: &MintSpec) -> String {
    let inputs = serde_json::json!([
        mint.token_url,
        mint.client_id,
        mint.scopes,
        mint.key.key_id,
        mint.key.region,
        mint.algorithm.map(|a| a.as_str()),
        mint.kid,
    ]);
    let digest = Sha256::digest(inputs.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a mint failed, for status and Events, and how to retry.
pub fn classify(error: &MintError, now: SystemTime) -> (&'static str, FailureKind) {
    match error {
        MintError::Kms(kms) if kms.is_retryable() => {
            (reason::KMS_SIGNING_FAILED, FailureKind::Transient)
        }
        MintError::Kms(_) => (reason::KMS_KEY_UNUSABLE, FailureKind::Configuration),
        MintError::Assertion(_) => (reason::KMS_SIGNING_FAILED, FailureKind::Transient),
        MintError::Token(TokenError::RateLimited { retry_at }) => (
            reason::RATE_LIMITED,
            FailureKind::RateLimitedUntil(retry_at.unwrap_or(now + Duration::from_secs(60))),
        ),
        MintError::Token(token) if token.is_retryable() => {
            (reason::TOKEN_ENDPOINT_UNAVAILABLE, FailureKind::Transient)
        }
        MintError::Token(TokenError::InvalidResponse { .. }) => {
            (reason::TOKEN_ENDPOINT_UNAVAILABLE, FailureKind::Transient)
        }
        MintError::Token(_) => (reason::TOKEN_REQUEST_REJECTED, FailureKind::Configuration),
    }
}

fn time(at: SystemTime) -> Option<Time> {
    jiff::Timestamp::try_from(schedule::truncate_to_seconds(at))
        .ok()
        .map(Time)
}

fn system_time(at: &Option<Time>) -> Option<SystemTime> {
    at.as_ref().map(|t| SystemTime::from(t.0))
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

/// A condition, keeping its transition time when its status did not change.
fn condition(
    previous: Option<&Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: SystemTime,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .filter(|p| p.status == status)
        .map(|p| p.last_transition_time.clone())
        .or_else(|| time(now))
        .unwrap_or(Time(jiff::Timestamp::UNIX_EPOCH));
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The operator's view of one reconcile, turned into status and Events.
struct Outcome {
    ready: (bool, &'static str, String),
    renewal_failing: Option<(&'static str, String)>,
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

pub async fn reconcile(token: Arc<OktaServiceToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = token.namespace().unwrap_or_default();
    let name = token.name_any();
    let span = tracing::info_span!("reconcile", %namespace, %name);
    let result = reconcile_inner(&token, &ctx).instrument(span).await;
    if result.is_ok() {
        ctx.api_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectRef::from_obj(token.as_ref()));
    }
    result
}

async fn reconcile_inner(token: &OktaServiceToken, ctx: &Context) -> Result<Action, Error> {
    let namespace = token.namespace().ok_or(Error::IncompleteObject)?;
    let uid = token.uid().ok_or(Error::IncompleteObject)?;
    let now = SystemTime::now();
    let generation = token.metadata.generation;
    let old_status = token.status.clone().unwrap_or_default();
    let spec_changed = old_status.observed_generation != generation;
    let tokens: Api<OktaServiceToken> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    let resolved = match resolve(token) {
        Ok(resolved) => resolved,
        Err(message) => {
            tracing::warn!(%message, "invalid spec");
            let mut status = old_status.clone();
            status.observed_generation = generation;
            let outcome = Outcome {
                ready: (false, reason::INVALID_SPEC, message),
                renewal_failing: None,
            };
            publish_status(ctx, &tokens, token, &old_status, status, outcome, now).await?;
            return Ok(Action::await_change());
        }
    };

    let existing = secrets.get_metadata_opt(&resolved.secret_name).await?;
    let stored = match secret::secret_state(existing.as_ref().map(|s| &s.metadata), &uid) {
        SecretState::Foreign { controller } => {
            let owner =
                controller.map_or("no controller".to_owned(), |c| format!("controlled by {c}"));
            let message = format!(
                "Secret {} already exists ({owner}) and is not managed by this OktaServiceToken; it is left untouched. Delete it or choose another secretName.",
                resolved.secret_name
            );
            tracing::warn!("target Secret belongs to someone else");
            let mut status = old_status.clone();
            status.observed_generation = generation;
            status.secret_name = Some(resolved.secret_name.clone());
            let outcome = Outcome {
                ready: (false, reason::SECRET_CONFLICT, message),
                renewal_failing: None,
            };
            publish_status(ctx, &tokens, token, &old_status, status, outcome, now).await?;
            return Ok(Action::requeue(CONFLICT_RECHECK));
        }
        SecretState::Ours(stored) => stored,
        SecretState::Missing => None,
    };

    let seed = |issued_at: SystemTime| {
        let issued = issued_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        schedule::seeded_jitter(&format!("{uid}/{issued}"))
    };
    // The token in the Secret, if it was minted for the current inputs and has not expired.
    let current = stored
        .as_ref()
        .filter(|s| s.input_hash == resolved.input_hash && now < s.expires_at)
        .map(|s| {
            let renew_at = schedule::renew_at(
                s.issued_at,
                s.expires_at,
                resolved.renew_before,
                seed(s.issued_at),
            );
            (s.clone(), renew_at)
        });

    if let Some((stored, renew_at)) = &current
        && now < *renew_at
    {
        // Fresh: nothing to mint. Make sure status says so (after a restart,
        // a renewBefore change, or a spec change that kept the inputs).
        let mut status = old_status.clone();
        status.observed_generation = generation;
        status.secret_name = Some(resolved.secret_name.clone());
        status.token_url = Some(resolved.mint.token_url.clone());
        status.expires_at = time(stored.expires_at);
        status.renew_at = time(*renew_at);
        status.last_refresh_time = time(stored.issued_at);
        // From the Secret, not from the (possibly stale) cached status.
        status.fingerprint = stored.fingerprint.clone();
        status.kid = stored.kid.clone();
        status.algorithm = stored.algorithm.clone();
        status.failure_count = None;
        status.last_failure_time = None;
        status.next_attempt_time = None;
        let outcome = Outcome {
            ready: (
                true,
                ready_reason_when_fresh(&old_status),
                format!("Token valid until {}", secret::rfc3339(stored.expires_at)),
            ),
            renewal_failing: None,
        };
        publish_status(ctx, &tokens, token, &old_status, status, outcome, now).await?;
        tracing::debug!("token is fresh");
        return Ok(Action::requeue(schedule::delay_until(now, *renew_at)));
    }

    // A failure is pending: wait for its retry time unless the spec changed.
    let valid_until = current.as_ref().map(|(s, _)| s.expires_at);
    if !spec_changed
        && old_status.failure_count.unwrap_or(0) > 0
        && let Some(next_attempt) = system_time(&old_status.next_attempt_time)
        && now < next_attempt
    {
        let wake = match valid_until {
            Some(expires_at) => next_attempt.min(expires_at),
            None => next_attempt,
        };
        if valid_until.is_none() && ready_status(&old_status) {
            // The last good token just ran out while renewal keeps failing.
            let mut status = old_status.clone();
            status.expires_at = stored.as_ref().and_then(|s| time(s.expires_at));
            let failing = old_status
                .condition(CONDITION_RENEWAL_FAILING)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            let outcome = Outcome {
                ready: (
                    false,
                    reason::TOKEN_EXPIRED,
                    format!("The token expired and renewal is failing: {failing}"),
                ),
                renewal_failing: Some((failing_reason(&old_status), failing)),
            };
            publish_status(ctx, &tokens, token, &old_status, status, outcome, now).await?;
        }
        return Ok(Action::requeue(schedule::delay_until(now, wake)));
    }

    match ctx.minter.mint(&resolved.mint).await {
        Ok(minted) => {
            let secret =
                secret::desired_secret(token, &resolved.secret_name, &minted, &resolved.input_hash);
            secret::apply(&secrets, &secret).await?;
            let (issued_at, expires_at) = (minted.token.received_at, minted.token.expires_at());
            let renew_at = schedule::renew_at(
                issued_at,
                expires_at,
                resolved.renew_before,
                seed(issued_at),
            );
            tracing::info!(
                fingerprint = %minted.token.access_token.fingerprint(),
                expires_at = %secret::rfc3339(expires_at),
                renew_at = %secret::rfc3339(renew_at),
                "issued a token"
            );
            let status = issued_status(&old_status, generation, &resolved, &minted, renew_at);
            publish_event(
                ctx,
                token,
                EventType::Normal,
                reason::TOKEN_ISSUED,
                format!(
                    "Issued a token ({}) for Secret {}, valid until {}",
                    minted.token.access_token.fingerprint(),
                    resolved.secret_name,
                    secret::rfc3339(expires_at)
                ),
            )
            .await;
            let outcome = Outcome {
                ready: (
                    true,
                    reason::TOKEN_ISSUED,
                    format!("Token valid until {}", secret::rfc3339(expires_at)),
                ),
                renewal_failing: None,
            };
            publish_status(ctx, &tokens, token, &old_status, status, outcome, now).await?;
            Ok(Action::requeue(schedule::delay_until(now, renew_at)))
        }
        Err(error) => {
            let (failure_reason, kind) = classify(&error, now);
            let message = truncate(&error.to_string(), MAX_NOTE_CHARS);
            tracing::warn!(reason = failure_reason, error = %message, "token refresh failed");
            let failures = if spec_changed {
                1
            } else {
                old_status
                    .failure_count
                    .and_then(|count| u32::try_from(count).ok())
                    .unwrap_or(0)
                    .saturating_add(1)
            };
            let next_attempt = schedule::next_attempt(now, failures, kind, valid_until, jitter());
            let mut status = old_status.clone();
            status.observed_generation = generation;
            status.secret_name = Some(resolved.secret_name.clone());
            status.token_url = Some(resolved.mint.token_url.clone());
            status.failure_count = Some(i32::try_from(failures).unwrap_or(i32::MAX));
            status.last_failure_time = time(now);
            status.next_attempt_time = time(next_attempt);
            let ready = match valid_until {
                Some(expires_at) => (
                    true,
                    ready_reason_when_fresh(&old_status),
                    format!(
                        "Token valid until {}; renewal is failing, next attempt at {}",
                        secret::rfc3339(expires_at),
                        secret::rfc3339(next_attempt)
                    ),
                ),
                None => (false, failure_reason, message.clone()),
            };
            let newly_failing = old_status
                .condition(CONDITION_RENEWAL_FAILING)
                .is_none_or(|c| c.status != "True" || c.reason != failure_reason);
            if newly_failing || spec_changed {
                publish_event(
                    ctx,
                    token,
                    EventType::Warning,
                    failure_reason,
                    message.clone(),
                )
                .await;
            }
            let outcome = Outcome {
                ready,
                renewal_failing: Some((failure_reason, message)),
            };
            publish_status(ctx, &tokens, token, &old_status, status, outcome, now).await?;
            let wake = match valid_until {
                Some(expires_at) => next_attempt.min(expires_at),
                None => next_attempt,
            };
            Ok(Action::requeue(schedule::delay_until(now, wake)))
        }
    }
}

fn ready_status(status: &OktaServiceTokenStatus) -> bool {
    status
        .condition(CONDITION_READY)
        .is_some_and(|c| c.status == "True")
}

/// Keeps `Ready`'s reason stable while a token is valid.
fn ready_reason_when_fresh(status: &OktaServiceTokenStatus) -> &'static str {
    match status.condition(CONDITION_READY).map(|c| c.reason.as_str()) {
        Some(reason::RENEWED) => reason::RENEWED,
        _ => reason::TOKEN_ISSUED,
    }
}

fn failing_reason(status: &OktaServiceTokenStatus) -> &'static str {
    let current = status
        .condition(CONDITION_RENEWAL_FAILING)
        .map(|c| c.reason.as_str())
        .unwrap_or_default();
    [
        reason::KMS_SIGNING_FAILED,
        reason::KMS_KEY_UNUSABLE,
        reason::TOKEN_REQUEST_REJECTED,
        reason::TOKEN_ENDPOINT_UNAVAILABLE,
        reason::RATE_LIMITED,
    ]
    .into_iter()
    .find(|known| *known == current)
    .unwrap_or(reason::TOKEN_ENDPOINT_UNAVAILABLE)
}

fn issued_status(
    old: &OktaServiceTokenStatus,
    generation: Option<i64>,
    resolved: &Resolved,
    minted: &Minted,
    renew_at: SystemTime,
) -> OktaServiceTokenStatus {
    OktaServiceTokenStatus {
        conditions: old.conditions.clone(),
        observed_generation: generation,
        secret_name: Some(resolved.secret_name.clone()),
        token_url: Some(resolved.mint.token_url.clone()),
        kid: Some(minted.kid.clone()),
        algorithm: Some(minted.algorithm.as_str().to_owned()),
        fingerprint: Some(minted.token.access_token.fingerprint()),
        expires_at: time(minted.token.expires_at()),
        renew_at: time(renew_at),
        last_refresh_time: time(minted.token.received_at),
        failure_count: None,
        last_failure_time: None,
        next_attempt_time: None,
    }
}

/// Sets the conditions from `outcome`, writes the status when it changed,
/// and publishes Warning Events for transitions into a bad state.
async fn publish_status(
    ctx: &Context,
    api: &Api<OktaServiceToken>,
    token: &OktaServiceToken,
    old: &OktaServiceTokenStatus,
    mut status: OktaServiceTokenStatus,
    outcome: Outcome,
    now: SystemTime,
) -> Result<(), Error> {
    let generation = token.metadata.generation;
    let (ready, ready_reason, ready_message) = outcome.ready;
    let previous_ready = old.condition(CONDITION_READY);
    let mut conditions = vec![condition(
        previous_ready,
        CONDITION_READY,
        ready,
        ready_reason,
        ready_message.clone(),
        generation,
        now,
    )];
    let (failing, failing_reason, failing_message) = match outcome.renewal_failing {
        Some((reason, message)) => (true, reason, message),
        None => (
            false,
            reason::RENEWED,
            "The last renewal succeeded".to_owned(),
        ),
    };
    let previous_failing = old.condition(CONDITION_RENEWAL_FAILING);
    if failing || previous_failing.is_some() {
        conditions.push(condition(
            previous_failing,
            CONDITION_RENEWAL_FAILING,
            failing,
            failing_reason,
            failing_message,
            generation,
            now,
        ));
    }
    status.conditions = conditions;

    // Warnings for conditions the Ready flip itself explains (mint failures
    // publish their own Event).
    let entered = previous_ready
        .is_none_or(|p| p.reason != ready_reason || p.observed_generation != generation);
    if !ready
        && entered
        && matches!(
            ready_reason,
            reason::INVALID_SPEC | reason::SECRET_CONFLICT | reason::TOKEN_EXPIRED
        )
    {
        publish_event(ctx, token, EventType::Warning, ready_reason, ready_message).await;
    }

    if &status == old {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": OktaServiceToken::api_version(&()),
        "kind": OktaServiceToken::kind(&()),
        "status": status,
    });
    api.patch_status(
        &token.name_any(),
        &PatchParams::apply(OPERATOR_NAME).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish_event(
    ctx: &Context,
    token: &OktaServiceToken,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(&note, MAX_NOTE_CHARS)),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &token.object_ref(&())).await {
        tracing::warn!(%error, reason, "cannot publish an Event");
    }
}

/// Kubernetes API failures: retried with a per-object exponential backoff.
pub fn error_policy(token: Arc<OktaServiceToken>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.api_failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(ObjectRef::from_obj(token.as_ref())).or_insert(0);
        *entry = entry.saturating_add(1);
        *entry
    };
    let delay = schedule::backoff(failures, FailureKind::Transient, jitter());
    tracing::warn!(
        namespace = %token.namespace().unwrap_or_default(),
        name = %token.name_any(),
        %error,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Settings of the controller loop.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Watch one namespace; `None` watches all.
    pub namespace: Option<String>,
    pub concurrency: u16,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    config: ControllerConfig,
    readiness: crate::http::Readiness,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (tokens, secrets): (Api<OktaServiceToken>, Api<PartialObjectMeta<Secret>>) =
        match &config.namespace {
            Some(namespace) => (
                Api::namespaced(client.clone(), namespace),
                Api::namespaced(client, namespace),
            ),
            None => (Api::all(client.clone()), Api::all(client)),
        };
    // Fail early and clearly when the CRD is missing or RBAC forbids reading it.
    tokens
        .list(&kube::api::ListParams::default().limit(1))
        .await?;
    readiness.set_ready();

    let (reader, writer) = reflector::store();
    // Only spec changes (generation) wake the reconciler: the operator's own
    // status writes must not.
    let token_events = watcher(tokens, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // Owned Secrets are watched metadata-only: token values are never cached.
    let managed = format!("{}={OPERATOR_NAME}", secret::MANAGED_BY_LABEL);
    let secret_events = watcher(secrets, watcher::Config::default().labels(&managed))
        .default_backoff()
        .touched_objects();

    Controller::for_stream(token_events, reader)
        .owns_stream(secret_events)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
    Ok(())
}
