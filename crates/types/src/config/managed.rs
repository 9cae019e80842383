//! Protection groups and VMs made through the API and the portal, beside
//! the ones `standby.toml` declares. The file stays the source of its
//! own: a group or VM of the same name in the file wins.

use super::root::Config;
use super::vms::{Group, Vm};

impl Config {
    /// This configuration with `groups` (made through the API) added,
    /// each marked [`Group::managed`]. Returns the names the file
    /// declares too: those stay the file's.
    pub fn with_managed_groups(mut self, groups: Vec<(String, Group)>) -> (Config, Vec<String>) {
        let mut shadowed = Vec::new();
        for (name, mut g) in groups {
            if self.groups.get(&name).is_some_and(|f| !f.managed) {
                shadowed.push(name);
                continue;
            }
            g.managed = true;
            self.groups.insert(name, g);
        }
        (self, shadowed)
    }

    /// This configuration with `vms` (made from templates through the
    /// API) added, each marked [`Vm::managed`]. Returns the names the
    /// file declares too: those stay the file's.
    pub fn with_managed_vms(mut self, vms: Vec<(String, Vm)>) -> (Config, Vec<String>) {
        let mut shadowed = Vec::new();
        for (name, mut v) in vms {
            if self.vms.get(&name).is_some_and(|f| !f.managed) {
                shadowed.push(name);
                continue;
            }
            v.managed = true;
            self.vms.insert(name, v);
        }
        (self, shadowed)
    }

    /// The groups made through the API.
    pub fn managed_groups(&self) -> impl Iterator<Item = (&String, &Group)> {
        self.groups.iter().filter(|(_, g)| g.managed)
    }

    /// The groups made through the API that `keep` keeps, as
    /// `standby.toml` tables.
    pub fn managed_groups_toml(&self, keep: impl Fn(&Group) -> bool) -> Result<String, String> {
        let groups: std::collections::BTreeMap<&String, &Group> =
            self.managed_groups().filter(|(_, g)| keep(g)).collect();
        let mut doc = std::collections::BTreeMap::new();
        doc.insert("groups", groups);
        let body = toml::to_string(&doc).map_err(|e| format!("groups as TOML: {e}"))?;
        Ok(format!(
            "# Protection groups made through the API and the portal (kept in\n\
             # standby's database). Moved into standby.toml, a group becomes the\n\
             # file's: delete it through the API once the file declares it.\n\n{body}"
        ))
    }

    /// Check a configuration built in code (a file's is checked as it
    /// loads) as a file would be: `groups.silver.members: unknown vm 'x'`.
    pub fn check_whole(&self) -> Result<(), String> {
        self.validate()
            .map_err(|(path, message)| format!("{}: {message}", path.join(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            r#"
[sites.s1]
[hosts.h1]
site = "s1"
driver = "process"
disk_dir = "/tmp/disks"
[datastores.d1]
site = "s1"
path = "/tmp/d1"
[vms.a]
host = "h1"
command = "true"
[vms.b]
host = "h1"
command = "true"
[groups.gold]
members = ["a"]
schedule = "every 1h"
datastores = ["d1"]
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn group(members: &[&str]) -> Group {
        serde_json::from_value(serde_json::json!({
            "members": members, "schedule": "every 2m", "datastores": ["d1"],
        }))
        .unwrap()
    }

    #[test]
    fn groups_made_through_the_api_join_the_file_which_wins_its_names() {
        let (c, shadowed) = cfg().with_managed_groups(vec![
            ("silver".into(), group(&["b"])),
            ("gold".into(), group(&[])),
        ]);
        assert_eq!(shadowed, ["gold"]);
        assert!(c.groups["silver"].managed);
        assert!(!c.groups["gold"].managed);
        assert_eq!(c.managed_groups().count(), 1);
        c.check_whole().unwrap();
        // Not in what the API shows as the file's configuration.
        let shown = super::super::redacted(&c);
        assert!(shown["groups"]["silver"].is_null());
        assert!(shown["groups"]["gold"].is_object());
        let text = c.managed_groups_toml(|_| true).unwrap();
        assert!(text.contains("[groups.silver]"), "{text}");
        assert!(!text.contains("[groups.gold]"), "{text}");
        // What it exports reads back as the same group.
        let back: toml::Value = toml::from_str(&text).unwrap();
        let g: Group = back["groups"]["silver"].clone().try_into().unwrap();
        assert_eq!(g.members, ["b"]);
        assert_eq!(g.schedule.to_string(), "every 2m");
        let (bad, _) = cfg().with_managed_groups(vec![("x".into(), group(&["nope"]))]);
        let e = bad.check_whole().unwrap_err();
        assert!(e.starts_with("groups.x.members"), "{e}");
    }
}
