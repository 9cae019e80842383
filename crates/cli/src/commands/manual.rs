//! `standby manual DIR`: the man pages and shell completions the Debian
//! package installs, generated from the CLI's own definition so they never
//! disagree with `--help`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

pub fn write(out: &Path) -> Result<()> {
    let man = out.join("man1");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("unable to create {}", d.display()))?;
    }
    let cmd = Cli::command();
    // standby(1), then standby-SUB(1) for every visible subcommand (one
    // level: the subcommands' own subcommands are in their page).
    page(&man, "standby", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("standby-{}", sub.get_name());
        page(
            &man,
            &name,
            sub.clone().bin_name(format!("standby {}", sub.get_name())),
        )?;
    }
    for (shell, file) in [
        (Shell::Bash, "standby"),
        (Shell::Zsh, "_standby"),
        (Shell::Fish, "standby.fish"),
    ] {
        let path = completions.join(file);
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("unable to write {}", path.display()))?;
        clap_complete::generate(shell, &mut Cli::command(), "standby", &mut f);
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}

fn page(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .render(&mut buf)
        .with_context(|| format!("unable to render {name}(1)"))?;
    std::fs::write(&path, buf).with_context(|| format!("unable to write {}", path.display()))
}
