//! The token Secret: what it holds, who may own it, and how it is written.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use crate::crd::{OPERATOR_NAME, OktaServiceToken};
use crate::mint::Minted;

pub const KEY_ACCESS_TOKEN: &str = "access_token";
pub const KEY_TOKEN_TYPE: &str = "token_type";
pub const KEY_EXPIRES_AT: &str = "expires_at";
pub const KEY_SCOPE: &str = "scope";

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const ANNOTATION_INPUT_HASH: &str = "okta-token-operator.dev/input-hash";
pub const ANNOTATION_ISSUED_AT: &str = "okta-token-operator.dev/issued-at";
pub const ANNOTATION_EXPIRES_AT: &str = "okta-token-operator.dev/expires-at";
pub const ANNOTATION_FINGERPRINT: &str = "okta-token-operator.dev/fingerprint";
pub const ANNOTATION_KID: &str = "okta-token-operator.dev/kid";
pub const ANNOTATION_ALGORITHM: &str = "okta-token-operator.dev/algorithm";

/// What the operator knows about a token from its Secret's metadata alone,
/// so deciding whether to renew never needs the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    pub input_hash: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// How the token was obtained, so status can be rebuilt from the Secret alone.
    pub fingerprint: Option<String>,
    pub kid: Option<String>,
    pub algorithm: Option<String>,
}

/// Who the Secret of the target name belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    Missing,
    /// Controlled by this resource; `None` when its annotations are unreadable
    /// (edited by hand), which is treated as "no usable token".
    Ours(Option<StoredToken>),
    /// Exists and is not controlled by this resource: never overwritten.
    Foreign {
        controller: Option<String>,
    },
}

/// Classifies the Secret's metadata relative to the resource with `owner_uid`.
pub fn secret_state(meta: Option<&ObjectMeta>, owner_uid: &str) -> SecretState {
    let Some(meta) = meta else {
        return SecretState::Missing;
    };
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|reference| reference.controller == Some(true));
    match controller {
        Some(reference) if reference.uid == owner_uid => SecretState::Ours(stored_token(meta)),
        Some(reference) => SecretState::Foreign {
            controller: Some(format!("{} {}", reference.kind, reference.name)),
        },
        None => SecretState::Foreign { controller: None },
    }
}

fn stored_token(meta: &ObjectMeta) -> Option<StoredToken> {
    let annotations = meta.annotations.as_ref()?;
    let time = |key: &str| {
        annotations
            .get(key)?
            .parse::<jiff::Timestamp>()
            .ok()
            .map(SystemTime::from)
    };
    Some(StoredToken {
        input_hash: annotations.get(ANNOTATION_INPUT_HASH)?.clone(),
        issued_at: time(ANNOTATION_ISSUED_AT)?,
        expires_at: time(ANNOTATION_EXPIRES_AT)?,
        fingerprint: annotations.get(ANNOTATION_FINGERPRINT).cloned(),
        kid: annotations.get(ANNOTATION_KID).cloned(),
        algorithm: annotations.get(ANNOTATION_ALGORITHM).cloned(),
    })
}

/// RFC 3339 in UTC, whole seconds.
pub fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|at| at.round(jiff::Unit::Second).unwrap_or(at).to_string())
        .unwrap_or_default()
}

/// The Secret for a freshly issued token.
pub fn desired_secret(
    owner: &OktaServiceToken,
    secret_name: &str,
    minted: &Minted,
    input_hash: &str,
) -> Secret {
    let token = &minted.token;
    let expires_at = rfc3339(token.expires_at());
    let data = BTreeMap::from([
        (
            KEY_ACCESS_TOKEN.to_owned(),
            ByteString(token.access_token.expose().as_bytes().to_vec()),
        ),
        (
            KEY_TOKEN_TYPE.to_owned(),
            ByteString(token.token_type.clone().into_bytes()),
        ),
        (
            KEY_EXPIRES_AT.to_owned(),
            ByteString(expires_at.clone().into_bytes()),
        ),
        (
            KEY_SCOPE.to_owned(),
            ByteString(token.scope.clone().unwrap_or_default().into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: owner.namespace(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                OPERATOR_NAME.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_INPUT_HASH.to_owned(), input_hash.to_owned()),
                (ANNOTATION_ISSUED_AT.to_owned(), rfc3339(token.received_at)),
                (ANNOTATION_EXPIRES_AT.to_owned(), expires_at),
                (
                    ANNOTATION_FINGERPRINT.to_owned(),
                    token.access_token.fingerprint(),
                ),
                (ANNOTATION_KID.to_owned(), minted.kid.clone()),
                (
                    ANNOTATION_ALGORITHM.to_owned(),
                    minted.algorithm.as_str().to_owned(),
                ),
            ])),
            owner_references: Some(vec![controller_reference(owner)]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn controller_reference(owner: &OktaServiceToken) -> OwnerReference {
    OwnerReference {
        api_version: OktaServiceToken::api_version(&()).into_owned(),
        kind: OktaServiceToken::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        // Blocking the owner's deletion would need finalizer rights on it.
        block_owner_deletion: None,
    }
}

/// Writes `secret` with server-side apply, forcing the fields this
/// operator owns.
pub async fn apply(api: &Api<Secret>, secret: &Secret) -> Result<(), kube::Error> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(OPERATOR_NAME).force(),
        &Patch::Apply(secret),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::okta::{AccessToken, IssuedToken};

    fn owner() -> OktaServiceToken {
        let mut owner = OktaServiceToken::new("api-token", crate::crd::example_spec());
        owner.metadata.namespace = Some("team-a".into());
        owner.metadata.uid = Some("uid-1".into());
        owner
    }

    fn token() -> IssuedToken {
        IssuedToken {
            access_token: AccessToken::new("the-token".into()),
            token_type: "Bearer".into(),
            expires_in: Duration::from_secs(3600),
            scope: Some("okta.users.read".into()),
            received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn minted() -> Minted {
        Minted {
            token: token(),
            kid: "kid-1".into(),
            algorithm: crate::assertion::Algorithm::Es256,
        }
    }

    #[test]
    fn secret_holds_the_token_and_is_controlled_by_its_resource() {
        let secret = desired_secret(&owner(), "okta-api", &minted(), "hash-1");
        let data = secret.data.as_ref().expect("data");
        assert_eq!(data[KEY_ACCESS_TOKEN].0, b"the-token");
        assert_eq!(data[KEY_TOKEN_TYPE].0, b"Bearer");
        assert_eq!(data[KEY_EXPIRES_AT].0, b"2027-01-15T09:00:00Z");
        assert_eq!(data[KEY_SCOPE].0, b"okta.users.read");
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert!(secret.string_data.is_none(), "data, never stringData");
        assert_eq!(secret.metadata.namespace.as_deref(), Some("team-a"));
        let reference = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(reference.uid, "uid-1");
        assert_eq!(reference.controller, Some(true));
        assert_eq!(reference.kind, "OktaServiceToken");

        assert_eq!(
            secret_state(Some(&secret.metadata), "uid-1"),
            SecretState::Ours(Some(StoredToken {
                input_hash: "hash-1".into(),
                issued_at: token().received_at,
                expires_at: token().expires_at(),
                fingerprint: Some(token().access_token.fingerprint()),
                kid: Some("kid-1".into()),
                algorithm: Some("ES256".into()),
            }))
        );
    }

    #[test]
    fn a_secret_controlled_by_anything_else_is_foreign() {
        let secret = desired_secret(&owner(), "okta-api", &minted(), "hash-1");
        assert!(matches!(
            secret_state(Some(&secret.metadata), "another-uid"),
            SecretState::Foreign { .. }
        ));
        let unowned = ObjectMeta {
            name: Some("okta-api".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(
            secret_state(Some(&unowned), "uid-1"),
            SecretState::Foreign { controller: None }
        );
        assert_eq!(secret_state(None, "uid-1"), SecretState::Missing);
    }

    #[test]
    fn hand_edited_annotations_mean_no_usable_token() {
        let mut secret = desired_secret(&owner(), "okta-api", &minted(), "hash-1");
        if let Some(annotations) = secret.metadata.annotations.as_mut() {
            annotations.insert(ANNOTATION_EXPIRES_AT.into(), "tomorrow".into());
        }
        assert_eq!(
            secret_state(Some(&secret.metadata), "uid-1"),
            SecretState::Ours(None)
        );
    }
}
