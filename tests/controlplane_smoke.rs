//! Smoke tests proving the test control plane is a real Kubernetes: the
//! pinned version, CRUD and server-side apply, RBAC, garbage collection,
//! namespace deletion and kubectl all behave as on a cluster.
//!
//! Needs the binaries from `make controlplane-bins` (see testbed::controlplane).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use serde_json::json;
use testbed::controlplane::{ControlPlane, KUBERNETES_VERSION, service_account_user, unique_name};
use testbed::eventually;

/// The Kubernetes minor k8s-openapi is compiled for (its `v1_*` feature).
fn compiled_openapi_minor() -> &'static str {
    k8s_openapi::k8s_if_1_33! { return "33"; }
    k8s_openapi::k8s_if_1_34! { return "34"; }
    k8s_openapi::k8s_if_1_35! { return "35"; }
    k8s_openapi::k8s_if_1_36! { return "36"; }
    k8s_openapi::k8s_if_1_37! { return "37"; }
    #[allow(unreachable_code)]
    "unknown"
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn server_reports_the_pinned_kubernetes_version() {
    let control_plane = ControlPlane::shared();
    let version = control_plane
        .client()
        .apiserver_version()
        .await
        .expect("GET /version");
    assert_eq!(version.git_version, KUBERNETES_VERSION, "{version:?}");
    assert_eq!(version.major, "1");
    assert_eq!(
        version.minor,
        compiled_openapi_minor(),
        "the control plane's minor must match the k8s-openapi feature the crates compile"
    );
}

#[tokio::test]
async fn config_map_create_get_server_side_apply_delete() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.create_namespace("smoke-crud").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(control_plane.client(), &namespace);

    let created = config_maps
        .create(
            &PostParams {
                field_manager: Some("smoke-create".into()),
                ..Default::default()
            },
            &config_map("settings", &[("color", "blue")]),
        )
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some(), "the server assigns a uid");

    let fetched = config_maps.get("settings").await.expect("get");
    assert_eq!(
        fetched.data,
        Some(BTreeMap::from([("color".into(), "blue".into())]))
    );

    // Server-side apply by a second field manager adds a field and keeps the first.
    let apply = PatchParams::apply("smoke-apply");
    let applied = config_maps
        .patch(
            "settings",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "settings" },
                "data": { "size": "large" }
            })),
        )
        .await
        .expect("server-side apply");
    assert_eq!(
        applied.data,
        Some(BTreeMap::from([
            ("color".into(), "blue".into()),
            ("size".into(), "large".into()),
        ]))
    );
    let managers: Vec<(String, String)> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|entry| {
            (
                entry.manager.unwrap_or_default(),
                entry.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("smoke-create".into(), "Update".into())),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("smoke-apply".into(), "Apply".into())),
        "{managers:?}"
    );

    // Field ownership is enforced: applying a field another manager owns conflicts...
    let conflict = config_maps
        .patch(
            "settings",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "settings" },
                "data": { "size": "large", "color": "red" }
            })),
        )
        .await
        .expect_err("applying a field owned by another manager must conflict");
    assert_eq!(status_code(&conflict), Some(409), "{conflict}");
    // ... unless forced.
    let forced = config_maps
        .patch(
            "settings",
            &apply.clone().force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "settings" },
                "data": { "size": "large", "color": "red" }
            })),
        )
        .await
        .expect("forced apply");
    assert_eq!(forced.data.unwrap_or_default()["color"], "red");

    config_maps
        .delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = config_maps.get("settings").await.expect_err("deleted");
    assert_eq!(status_code(&gone), Some(404), "{gone}");
}

#[tokio::test]
async fn rbac_refuses_a_service_account_until_a_role_grants_the_verb() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.create_namespace("smoke-rbac").await;
    let admin = control_plane.client();
    let account = "reader";
    Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(account.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the ServiceAccount");
    Api::<ConfigMap>::namespaced(admin.clone(), &namespace)
        .create(
            &PostParams::default(),
            &config_map("visible", &[("k", "v")]),
        )
        .await
        .expect("create a ConfigMap to read");

    let as_reader: Api<ConfigMap> = Api::namespaced(
        control_plane.service_account_client(&namespace, account),
        &namespace,
    );
    let refused = as_reader
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without a binding must not list ConfigMaps");
    assert_eq!(status_code(&refused), Some(403), "{refused}");
    let kube::Error::Api(status) = &refused else {
        unreachable!()
    };
    assert!(
        status
            .message
            .contains(&service_account_user(&namespace, account)),
        "the refusal names the impersonated ServiceAccount: {}",
        status.message
    );

    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta {
                    name: Some("config-map-reader".into()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["get".into(), "list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create the Role");
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some("reader-reads-config-maps".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "config-map-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: account.into(),
                    namespace: Some(namespace.clone()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create the RoleBinding");

    // The authorizer sees new bindings through an informer: allow it a moment.
    let listed = eventually(
        "the granted list succeeds",
        Duration::from_secs(10),
        || async { as_reader.list(&ListParams::default()).await.ok() },
    )
    .await;
    let names: Vec<String> = listed
        .items
        .into_iter()
        .filter_map(|item| item.metadata.name)
        .collect();
    assert!(names.contains(&"visible".to_owned()), "{names:?}");

    // A verb the Role does not grant stays refused.
    let still_refused = as_reader
        .create(&PostParams::default(), &config_map("not-allowed", &[]))
        .await
        .expect_err("create is not granted");
    assert_eq!(status_code(&still_refused), Some(403), "{still_refused}");
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependent() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.create_namespace("smoke-gc").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(control_plane.client(), &namespace);
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", &[]))
        .await
        .expect("create the owner");
    let mut dependent = config_map("dependent", &[]);
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().expect("the owner has a uid"),
        ..Default::default()
    }]);
    config_maps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("create the dependent");

    let started = Instant::now();
    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete the owner");
    eventually(
        "kube-controller-manager deletes the dependent",
        Duration::from_secs(60),
        || async {
            match config_maps.get("dependent").await {
                Err(error) if status_code(&error) == Some(404) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    eprintln!(
        "dependent garbage-collected {:?} after its owner was deleted",
        started.elapsed()
    );
}

#[tokio::test]
async fn deleting_a_namespace_removes_it_and_its_objects() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.create_namespace("smoke-ns").await;
    let client = control_plane.client();
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &config_map("inside", &[("k", "v")]))
        .await
        .expect("create a ConfigMap in the namespace");
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    // Without the namespace controller it would stay Terminating forever.
    eventually(
        "the namespace controller finishes deleting the namespace",
        Duration::from_secs(60),
        || async {
            match namespaces.get(&namespace).await {
                Err(error) if status_code(&error) == Some(404) => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

fn kubectl() -> std::process::Command {
    let program = if std::path::Path::new("/usr/bin/kubectl").exists() {
        "/usr/bin/kubectl"
    } else {
        "kubectl"
    };
    std::process::Command::new(program)
}

#[tokio::test]
async fn kubectl_works_with_the_written_kubeconfig() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.create_namespace("smoke-kubectl").await;
    let kubeconfig = control_plane.kubeconfig_path().to_owned();

    let output = tokio::task::spawn_blocking(move || {
        kubectl()
            .args(["get", "namespaces", "--kubeconfig"])
            .arg(&kubeconfig)
            .output()
    })
    .await
    .expect("join")
    .expect("run kubectl (is it installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl get namespaces failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("NAME"), "{stdout}");
    for expected in ["default", "kube-system", namespace.as_str()] {
        assert!(
            stdout
                .lines()
                .any(|line| line.split_whitespace().next() == Some(expected)),
            "kubectl get namespaces lists {expected}:\n{stdout}"
        );
    }

    // An impersonating kubeconfig: kubectl sees what the ServiceAccount may do.
    let as_account = control_plane.kubeconfig_as(&service_account_user(&namespace, "nobody"));
    let namespace_for_kubectl = namespace.clone();
    let output = tokio::task::spawn_blocking(move || {
        kubectl()
            .args([
                "auth",
                "can-i",
                "list",
                "configmaps",
                "-n",
                &namespace_for_kubectl,
            ])
            .arg("--kubeconfig")
            .arg(&as_account)
            .output()
    })
    .await
    .expect("join")
    .expect("run kubectl auth can-i");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "no",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.okta-token-operator.dev
spec:
  group: smoke.okta-token-operator.dev
  names: { kind: Widget, plural: widgets, singular: widget }
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: { type: integer, minimum: 1 }
"#;

#[tokio::test]
async fn a_custom_resource_definition_schema_is_enforced() {
    let control_plane = ControlPlane::shared();
    let file = control_plane
        .dir()
        .join(format!("{}.yaml", unique_name("widget-crd")));
    std::fs::write(&file, WIDGET_CRD).expect("write the CRD manifest");
    let installed = control_plane
        .install_crds(&[file])
        .await
        .expect("install the CRD");
    assert_eq!(installed, ["widgets.smoke.okta-token-operator.dev"]);

    let namespace = control_plane.create_namespace("smoke-crd").await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("smoke.okta-token-operator.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(control_plane.client(), &namespace, &resource);

    let created = widgets
        .create(
            &PostParams::default(),
            &DynamicObject::new("good", &resource)
                .data(json!({ "spec": { "size": 3, "colour": "green" } })),
        )
        .await
        .expect("a valid Widget is accepted");
    assert_eq!(
        created.data["spec"],
        json!({ "size": 3 }),
        "fields outside the schema are pruned"
    );

    for (name, spec) in [
        ("wrong-type", json!({ "size": "three" })),
        ("too-small", json!({ "size": 0 })),
        ("missing", json!({})),
    ] {
        let refused = widgets
            .create(
                &PostParams::default(),
                &DynamicObject::new(name, &resource).data(json!({ "spec": spec })),
            )
            .await
            .expect_err("an invalid Widget is refused");
        assert_eq!(status_code(&refused), Some(422), "{name}: {refused}");
    }
}
