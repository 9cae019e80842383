use crate::harness::STANDBY;

fn server_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(STANDBY)
        .args(["--config", cfg.to_str().unwrap(), "server"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad config must stop the server");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn malformed_toml_names_file_line_and_field() {
    let err = server_error(
        "[sites.site1]\n[hosts.h1]\nsite = \"site1\"\ndriver = \"process\"\ndisk_dir = 5\n",
    );
    assert!(err.contains("bad.toml:5:"), "line missing: {err}");
    assert!(
        err.contains("disk_dir") || err.contains("string"),
        "field missing: {err}"
    );

    let err = server_error("[sites.site1]\ndescription = \"x\"\n[sites.site1\n");
    assert!(err.contains("bad.toml:3:"), "line missing: {err}");
}

#[test]
fn bad_reference_names_the_field_and_its_line() {
    let err = server_error(
        "[sites.site1]\n[hosts.h1]\nsite = \"site9\"\ndriver = \"process\"\ndisk_dir = \"d\"\n",
    );
    assert!(err.contains("bad.toml:3:"), "line missing: {err}");
    assert!(err.contains("hosts.h1.site"), "field missing: {err}");
    assert!(
        err.contains("unknown site 'site9'"),
        "message missing: {err}"
    );
}
