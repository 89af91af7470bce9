//! Step 2, read the Secrets the spec refers to. The values are only used to
//! connect to the database and to hash the configuration; they are never
//! written anywhere (the pods get `secretKeyRef`s). The Secrets are watched: a
//! change triggers a reconcile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::driver::Failure;
use super::reason::Reason;
use super::Error;
use crate::crd::{RealtimeServerSpec, SecretKeyRef};

/// The referenced secret values.
pub struct Resolved {
    pub db_password: String,
    /// `secret/key` -> value, for the configuration hash.
    pub values: BTreeMap<String, Vec<u8>>,
}

/// Why the secrets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Something the user must fix: the message says what.
    #[error("{0}")]
    Missing(String),
    /// The API server did not answer.
    #[error("reading a Secret failed: {0}")]
    Api(#[source] kube::Error),
}

/// A missing Secret is looked at again when it changes (and at the resync); a
/// failed request is retried without a word in status.
impl From<SecretsError> for Failure {
    fn from(e: SecretsError) -> Failure {
        match e {
            SecretsError::Missing(message) => Failure::told(Reason::SecretNotFound, message),
            SecretsError::Api(e) => Failure::Untold(Error::Kube(e)),
        }
    }
}

async fn value(api: &Api<Secret>, ns: &str, r: &SecretKeyRef) -> Result<Vec<u8>, SecretsError> {
    let secret = api.get_opt(&r.name).await.map_err(SecretsError::Api)?;
    let Some(secret) = secret else {
        return Err(SecretsError::Missing(format!(
            "Secret {ns}/{} not found: create it with the key {:?}",
            r.name, r.key
        )));
    };
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|s| s.clone().into_bytes());
    from_data.or(from_string).ok_or_else(|| {
        SecretsError::Missing(format!(
            "Secret {ns}/{} has no key {:?}: add it, or point the spec at the right key",
            r.name, r.key
        ))
    })
}

/// Reads the database password and, when set, the JWT secret.
pub async fn read(
    client: &Client,
    ns: &str,
    spec: &RealtimeServerSpec,
) -> Result<Resolved, SecretsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut values = BTreeMap::new();
    let pw_ref = &spec.database.password_secret_ref;
    let pw = value(&api, ns, pw_ref).await?;
    let db_password = String::from_utf8(pw.clone()).map_err(|_| {
        SecretsError::Missing(format!(
            "Secret {ns}/{} key {:?} is not UTF-8 text",
            pw_ref.name, pw_ref.key
        ))
    })?;
    values.insert(format!("{}/{}", pw_ref.name, pw_ref.key), pw);
    if let Some(jwt) = &spec.auth.jwt_secret_ref {
        let v = value(&api, ns, jwt).await?;
        values.insert(format!("{}/{}", jwt.name, jwt.key), v);
    }
    Ok(Resolved {
        db_password,
        values,
    })
}

/// The names of the Secrets `spec` refers to (for the Secret watch).
pub fn referenced(spec: &RealtimeServerSpec) -> Vec<&str> {
    let mut v = vec![spec.database.password_secret_ref.name.as_str()];
    if let Some(j) = &spec.auth.jwt_secret_ref {
        v.push(j.name.as_str());
    }
    v
}
