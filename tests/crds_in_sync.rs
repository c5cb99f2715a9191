//! crds/ and deploy/crd/ are generated from the Rust types: a change to the
//! types without `make crd` fails here, so CI never ships a stale schema.

use okta_token_operator::crd::crd_yaml;

const CRD_FILE: &str = "oktaservicetokens.okta-token-operator.dev.yaml";

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = crd_yaml().expect("the CRD renders");
    for dir in ["crds", "deploy/crd"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(dir)
            .join(CRD_FILE);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            committed == generated,
            "{} is stale: run `make crd` and commit the result",
            path.display()
        );
    }
}
