//! What a remote agent agrees to run: its own policy, from its own copy of
//! `standby.toml`, checked against every VM definition the controller
//! sends (`/agent/v1/start`, `provision`, `point`, `restore`, drills).
//!
//! A VM definition from the wire is data. The agent:
//! - runs a process VM only when its command, a bare name resolved as
//!   [`crate::local::resolve_command`] does, equals one of
//!   `[agents.NAME] allowed_commands` resolved the same way (none allowed:
//!   no process VM runs);
//! - runs a qemu VM with its own QEMU binary whatever command was sent,
//!   refuses extra QEMU arguments (QEMU options can start programs and
//!   open files), and boots only a kernel or initrd that a `[vms.*.qemu]`
//!   of its own configuration names;
//! - keeps every disk under its host's `disk_dir` (normalised: no `..`,
//!   no symlink out of it);
//! - refuses environment variables that change how a program loads or
//!   what it loads ([`dangerous_env`]).
//!
//! A refusal is [`AgentError::Forbidden`] (403), naming the agent, the VM,
//! the offending value and the setting that would allow it.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use standby_hv::VmSpec;
use standby_types::config::{Config, DriverKind};

use crate::error::AgentError;
use crate::local::resolve_command;

/// The agent's own policy for the VMs of its host.
#[derive(Debug, Clone)]
pub struct Policy {
    pub agent: String,
    pub host: String,
    pub driver: DriverKind,
    /// The host's `libvirt_uri` (libvirt hosts).
    pub libvirt_uri: Option<String>,
    /// The host's `disk_dir`, as configured (absolute).
    pub disk_dir: PathBuf,
    /// `allowed_commands`, each resolved.
    allowed: Vec<(String, PathBuf)>,
    /// Kernels and initrds named by the configuration's qemu VMs.
    boot_files: BTreeSet<PathBuf>,
    /// VMs whose existing libvirt domain the configuration adopts.
    adopted: BTreeSet<String>,
    /// `[ha]`: when this agent stops its VMs by itself.
    pub self_fence: Option<crate::selffence::SelfFence>,
}

impl Policy {
    /// The policy of agent `name` in `cfg` (the agent's own configuration
    /// file): it must be declared with `host`.
    pub fn from_config(cfg: &Config, name: &str) -> Result<Policy, AgentError> {
        let a = cfg.agents.get(name).ok_or_else(|| {
            AgentError::BadRequest(format!(
                "agent {name} is not declared under [agents] in its configuration file"
            ))
        })?;
        let host = a.host.clone().ok_or_else(|| {
            AgentError::BadRequest(format!(
                "agent {name} runs a host (--data-dir) but [agents.{name}] has no 'host'"
            ))
        })?;
        let h = cfg.hosts.get(&host).ok_or_else(|| {
            AgentError::BadRequest(format!("agent {name}: unknown host '{host}'"))
        })?;
        let boot_files = cfg
            .vms
            .values()
            .filter_map(|v| v.qemu.as_ref())
            .flat_map(|q| q.kernel.iter().chain(q.initrd.iter()))
            .map(|p| lexical(p))
            .collect();
        let adopted = cfg
            .vms
            .iter()
            .filter(|(_, v)| v.adopted())
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Policy {
            adopted,
            agent: name.to_string(),
            host,
            driver: h.driver,
            libvirt_uri: h.libvirt_uri.clone(),
            disk_dir: lexical(&h.disk_dir),
            allowed: a
                .allowed_commands
                .iter()
                .map(|c| (c.clone(), resolve_command(c)))
                .collect(),
            boot_files,
            self_fence: cfg
                .ha
                .as_ref()
                .map(|ha| crate::selffence::SelfFence::from_config(cfg, ha, name)),
        })
    }

    /// The driver's name (`process`, `qemu`, `libvirt`).
    pub fn driver_kind(&self) -> &'static str {
        match self.driver {
            DriverKind::Process => "process",
            DriverKind::Qemu => "qemu",
            DriverKind::Libvirt => "libvirt",
        }
    }

    fn refuse(&self, vm: &str, what: String, allow: &str) -> AgentError {
        AgentError::Forbidden(format!(
            "agent {} refuses vm {vm}: {what}; {allow}",
            self.agent
        ))
    }

    /// Check `spec` against the policy; the spec the agent runs (its own
    /// resolved command, its own QEMU).
    pub fn check(&self, mut spec: VmSpec) -> Result<VmSpec, AgentError> {
        check_vm_name(&spec.name)?;
        let vm = spec.name.clone();
        let kind = if spec.libvirt.is_some() {
            "libvirt"
        } else if spec.qemu.is_some() {
            "qemu"
        } else {
            "process"
        };
        if kind != self.driver_kind() {
            return Err(AgentError::Conflict(format!(
                "agent {} runs host {} with the {} driver: vm {vm} is a {kind} VM",
                self.agent,
                self.host,
                self.driver_kind()
            )));
        }
        for d in &spec.disks {
            self.check_disk(&vm, &d.name, &d.path)?;
        }
        for k in spec.env.keys() {
            if dangerous_env(k) {
                return Err(self.refuse(
                    &vm,
                    format!("environment variable {k} changes how a program loads"),
                    "agents never set it; remove it from the VM's env",
                ));
            }
        }
        if spec.libvirt.as_ref().is_some_and(|l| l.adopt) {
            if !self.adopted.contains(&vm) {
                return Err(self.refuse(
                    &vm,
                    "adopting an existing libvirt domain".into(),
                    &format!("set [vms.{vm}.libvirt] adopt = true in the agent's own standby.toml"),
                ));
            }
            spec.command = PathBuf::new();
            spec.args.clear();
            return Ok(spec);
        }
        match &spec.qemu {
            Some(q) => {
                if !spec.args.is_empty() {
                    return Err(self.refuse(
                        &vm,
                        format!("extra QEMU arguments {:?}", spec.args),
                        "a remote agent builds QEMU's command line itself; remove args from the VM",
                    ));
                }
                for (what, p) in [("kernel", &q.kernel), ("initrd", &q.initrd)] {
                    if let Some(p) = p
                        && !self.boot_files.contains(&lexical(p))
                    {
                        return Err(self.refuse(
                            &vm,
                            format!("{what} {} is not one its configuration names", p.display()),
                            "name it as a kernel or initrd of a [vms.*.qemu] in the agent's own standby.toml",
                        ));
                    }
                }
                // Its own QEMU, whatever was sent.
                spec.command = PathBuf::new();
            }
            None => {
                let sent = spec.command.to_string_lossy().into_owned();
                let resolved = resolve_command(&sent);
                if !self.allowed.iter().any(|(_, r)| *r == resolved) {
                    return Err(self.refuse(
                        &vm,
                        format!(
                            "command {sent} (resolved: {}) is not allowed",
                            resolved.display()
                        ),
                        &format!(
                            "add it to [agents.{}] allowed_commands in the agent's standby.toml (allowed: {:?})",
                            self.agent,
                            self.allowed.iter().map(|(c, _)| c).collect::<Vec<_>>()
                        ),
                    ));
                }
                spec.command = resolved;
            }
        }
        Ok(spec)
    }

    /// A disk path must lie under `disk_dir`: lexically, and through any
    /// symlink that exists on its way.
    fn check_disk(&self, vm: &str, disk: &str, path: &Path) -> Result<(), AgentError> {
        let refuse = |why: &str| {
            self.refuse(
                vm,
                format!("disk {disk} at {} {why}", path.display()),
                &format!(
                    "disks live under [hosts.{}] disk_dir = {}",
                    self.host,
                    self.disk_dir.display()
                ),
            )
        };
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("is not a plain absolute path"));
        }
        if !path.starts_with(&self.disk_dir) || path == self.disk_dir {
            return Err(refuse("is outside disk_dir"));
        }
        // Symlinks: the deepest part of the path that exists, resolved,
        // must still be inside the resolved disk_dir.
        let Ok(root) = self.disk_dir.canonicalize() else {
            return Ok(());
        };
        let mut p = path;
        loop {
            if std::fs::symlink_metadata(p).is_ok() {
                let real = p.canonicalize().map_err(|_| refuse("cannot be resolved"))?;
                if !real.starts_with(&root) {
                    return Err(refuse(&format!(
                        "leads out of disk_dir (to {})",
                        real.display()
                    )));
                }
                return Ok(());
            }
            match p.parent() {
                Some(up) if up.starts_with(&self.disk_dir) => p = up,
                _ => return Ok(()),
            }
        }
    }
}

/// A VM name names files of the agent (`DATA/run/<vm>.pid`): letters,
/// digits, `-`, `_`, `.`, not starting with `.`.
pub fn check_vm_name(vm: &str) -> Result<(), AgentError> {
    let ok = !vm.is_empty()
        && vm.len() <= 64
        && !vm.starts_with('.')
        && vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!("bad vm name '{vm}'")))
    }
}

/// `.` dropped (paths from the configuration are absolute already).
fn lexical(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

/// Environment variables that change how a program is loaded or what
/// code it runs: the dynamic loader's (`LD_*`), glibc's and
/// interpreters' search paths and start-up hooks, and `PATH`.
pub fn dangerous_env(key: &str) -> bool {
    const NAMES: &[&str] = &[
        "PATH",
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
        "PERL5LIB",
        "PERLLIB",
        "PERL5OPT",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
    ];
    let k = key.to_ascii_uppercase();
    k.starts_with("LD_") || k.starts_with("MALLOC_") || NAMES.contains(&k.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use standby_hv::{DiskSpec, QemuSpec};

    fn cfg(dir: &Path, driver: &str, allowed: &str) -> Config {
        Config::parse(
            &format!(
                r#"
[sites.s1]
[hosts.h]
site = "s1"
driver = "{driver}"
disk_dir = "{d}/disks"
[agents.a]
site = "s1"
host = "h"
url = "http://127.0.0.1:1"
allowed_commands = [{allowed}]
[hosts.hq]
site = "s1"
driver = "qemu"
disk_dir = "{d}/qdisks"
[vms.q]
host = "hq"
[vms.q.qemu]
kernel = "{d}/boot/vmlinuz"
initrd = "{d}/boot/initrd.img"
"#,
                d = dir.display()
            ),
            Path::new("standby.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn spec(dir: &Path, command: &str, disk: &Path) -> VmSpec {
        VmSpec {
            name: "v".into(),
            command: command.into(),
            args: vec!["--x".into()],
            env: Default::default(),
            disks: vec![DiskSpec {
                name: "data".into(),
                path: disk.to_path_buf(),
                size: 1 << 20,
            }],
            workdir: dir.join("w"),
            qemu: None,
            libvirt: None,
        }
    }

    fn forbidden(r: Result<VmSpec, AgentError>) -> String {
        match r {
            Err(e @ AgentError::Forbidden(_)) => {
                assert_eq!(e.to_api().code, "forbidden");
                e.to_string()
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn commands_must_be_allowed_bare_or_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("disks")).unwrap();
        let disk = d.join("disks/v/data.img");
        let p = Policy::from_config(&cfg(d, "process", r#""/bin/sleep", "true""#), "a").unwrap();
        // Absolute, as allowed.
        let ok = p.check(spec(d, "/bin/sleep", &disk)).unwrap();
        assert_eq!(ok.command, PathBuf::from("/bin/sleep"));
        // A bare name allowed as a bare name resolves the same way.
        let ok = p.check(spec(d, "true", &disk)).unwrap();
        assert_eq!(ok.command, resolve_command("true"));
        // Another program, or the same name at another path: refused,
        // naming the agent, the VM, the value and the setting.
        let e = forbidden(p.check(spec(d, "/bin/sh", &disk)));
        for part in ["agent a", "vm v", "/bin/sh", "[agents.a] allowed_commands"] {
            assert!(e.contains(part), "{part}: {e}");
        }
        forbidden(p.check(spec(d, "sleep", &disk)));
        forbidden(p.check(spec(d, "/tmp/sleep", &disk)));
        // None allowed: no process VM at all.
        let none = Policy::from_config(&cfg(d, "process", ""), "a").unwrap();
        forbidden(none.check(spec(d, "/bin/sleep", &disk)));
    }

    #[test]
    fn disks_stay_under_disk_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("disks/v")).unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        let p = Policy::from_config(&cfg(d, "process", r#""/bin/sleep""#), "a").unwrap();
        let check = |path: PathBuf| p.check(spec(d, "/bin/sleep", &path));
        assert!(check(d.join("disks/v/data.img")).is_ok());
        assert!(check(d.join("disks/new/deep/data.img")).is_ok());
        let e = forbidden(check(d.join("elsewhere/data.img")));
        assert!(e.contains("disk_dir"), "{e}");
        forbidden(check(d.join("disks/../elsewhere/data.img")));
        forbidden(check(d.join("disks/v/../../etc/passwd")));
        forbidden(check(PathBuf::from("relative/data.img")));
        forbidden(check(d.join("disks")));
        // A symlink inside disk_dir that leads out of it, as the disk or
        // as a directory on its way.
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("disks/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("disks/v/pw.img")).unwrap();
        let e = forbidden(check(d.join("disks/out/data.img")));
        assert!(e.contains("leads out of disk_dir"), "{e}");
        forbidden(check(d.join("disks/v/pw.img")));
        // One that stays inside is fine.
        std::os::unix::fs::symlink(d.join("disks/v"), d.join("disks/alias")).unwrap();
        assert!(check(d.join("disks/alias/data.img")).is_ok());
    }

    #[test]
    fn loader_environment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = Policy::from_config(&cfg(d, "process", r#""/bin/sleep""#), "a").unwrap();
        let disk = d.join("disks/v/data.img");
        for k in [
            "LD_PRELOAD",
            "ld_library_path",
            "LD_AUDIT",
            "GCONV_PATH",
            "PATH",
        ] {
            let mut s = spec(d, "/bin/sleep", &disk);
            s.env.insert(k.into(), "/tmp/x".into());
            let e = forbidden(p.check(s));
            assert!(e.contains(k), "{e}");
        }
        let mut s = spec(d, "/bin/sleep", &disk);
        s.env.insert("SIP".into(), "127.0.0.1:5060".into());
        assert!(p.check(s).is_ok());
    }

    #[test]
    fn a_qemu_vm_runs_the_agents_qemu_with_its_configured_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = Policy::from_config(&cfg(d, "qemu", ""), "a").unwrap();
        let q = |kernel: PathBuf, args: Vec<String>| {
            let mut s = spec(d, "/tmp/evil-qemu", &d.join("disks/q/system.img"));
            s.name = "q".into();
            s.args = args;
            s.qemu = Some(QemuSpec {
                kernel: Some(kernel),
                initrd: Some(d.join("boot/initrd.img")),
                ..QemuSpec::default()
            });
            s
        };
        let ok = p.check(q(d.join("boot/vmlinuz"), vec![])).unwrap();
        assert_eq!(ok.command, PathBuf::new(), "the agent's own QEMU");
        let e = forbidden(p.check(q(d.join("disks/q/system.img"), vec![])));
        assert!(e.contains("kernel"), "{e}");
        let e = forbidden(p.check(q(
            d.join("boot/vmlinuz"),
            vec!["-netdev".into(), "tap,script=/tmp/x".into()],
        )));
        assert!(e.contains("QEMU arguments"), "{e}");
        // A process VM at a qemu agent: another kind, a conflict.
        let e = p
            .check(spec(d, "/bin/sleep", &d.join("disks/v/d.img")))
            .unwrap_err();
        assert!(matches!(e, AgentError::Conflict(_)), "{e}");
    }

    #[test]
    fn a_libvirt_agent_adopts_only_domains_its_configuration_adopts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = Config::parse(
            &format!(
                "[sites.s1]\n[hosts.h]\nsite = \"s1\"\ndriver = \"libvirt\"\ndisk_dir = \"{d}/disks\"\n\
                 [agents.a]\nsite = \"s1\"\nhost = \"h\"\nurl = \"http://127.0.0.1:1\"\n\
                 [vms.web]\nhost = \"h\"\n[vms.web.libvirt]\nadopt = true\n",
                d = d.display()
            ),
            Path::new("standby.toml"),
        )
        .unwrap();
        let p = Policy::from_config(&cfg, "a").unwrap();
        assert_eq!(p.driver_kind(), "libvirt");
        let adopt = |name: &str| {
            let mut s = spec(d, "/bin/evil", &d.join(format!("disks/{name}/vda.img")));
            s.name = name.into();
            s.libvirt = Some(standby_hv::LibvirtSpec { adopt: true });
            s
        };
        let ok = p.check(adopt("web")).unwrap();
        assert_eq!(ok.command, PathBuf::new());
        assert!(ok.args.is_empty());
        let e = forbidden(p.check(adopt("other")));
        assert!(e.contains("[vms.other.libvirt] adopt = true"), "{e}");
        // A process VM sent to a libvirt agent: a conflict, not run.
        assert!(matches!(
            p.check(spec(d, "/bin/sleep", &d.join("disks/v/data.img"))),
            Err(AgentError::Conflict(_))
        ));
    }
}
