//! The Kubernetes manifests in deploy/kubernetes/ are valid: `scripts/validate-manifests`
//! checks every resource against the Kubernetes schemas (strict) and loads each pgtenant
//! config in them with this build's `pgtenant check`. Skipped, with a message, only when the
//! validator (the `kubernetes-validate` package from PyPI) cannot be installed;
//! `scripts/test` installs it before the suite runs.

use std::process::Command;

#[test]
fn kubernetes_manifests_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/validate-manifests"))
        .env("PGTENANT_BIN", env!("CARGO_BIN_EXE_pgtenant"))
        .output()
        .expect("run scripts/validate-manifests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => println!("{stdout}"),
        Some(3) => eprintln!(
            "SKIPPED kubernetes_manifests_validate: the validator could not be installed \
             (scripts/validate-manifests --install-only needs pip and PyPI):\n{stderr}"
        ),
        _ => panic!(
            "scripts/validate-manifests failed ({}):\n{stdout}{stderr}",
            out.status
        ),
    }
}
