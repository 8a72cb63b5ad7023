//! Every subcommand's `--help`, as printed by the binary, documents every flag: its long name,
//! a sentence of help, and its environment twin.

mod common;

use clap::CommandFactory;
use invalidator::cli::Cli;

/// Every leaf subcommand path (`["relay"]`, `["dlq", "list"]`, …) with its clap definition.
fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        out.push((path, cmd.clone()));
        return;
    }
    for s in subs {
        let mut p = path.clone();
        p.push(s.get_name().to_string());
        leaves(s, p, out);
    }
}

#[tokio::test]
/// For each subcommand, `invalidator <subcommand> --help` names every flag with its env var,
/// and every flag has help text.
async fn help_documents_every_flag() {
    let mut all = Vec::new();
    leaves(&Cli::command(), vec![], &mut all);
    assert!(
        all.len() >= 10,
        "subcommands found: {:?}",
        all.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    for (path, cmd) in all {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = common::run_bin(&args, &[]).await;
        assert!(out.status.success(), "{args:?}");
        let help = common::text(&out.stdout);
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let long = arg
                .get_long()
                .unwrap_or_else(|| panic!("{path:?}: {id} has no long flag"));
            assert!(
                help.contains(&format!("--{long}")),
                "{path:?} --help lacks --{long}:\n{help}"
            );
            let text = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(text.len() > 10, "{path:?} --{long} has no help text");
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("{path:?} --{long} has no environment twin"));
            assert!(
                help.contains(&format!("[env: {}", env.to_string_lossy())),
                "{path:?} --help lacks the env twin of --{long}:\n{help}"
            );
        }
    }
}
