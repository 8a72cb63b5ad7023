//! A private PostgreSQL server for tests that must stop and restart the database, which the
//! rest of the suite shares: `initdb` into a temp dir, `pg_ctl start` on a free loopback
//! port, removed on drop.
//!
//! PostgreSQL refuses to run as root, so when the test runs as root the server runs as the
//! `postgres` user (`runuser`), which Debian's package creates. The binaries come from
//! `PG_BINDIR` if set, else the newest `/usr/lib/postgresql/*/bin` (Debian's layout), else
//! `pg_config --bindir`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tansu::tempdir;

pub struct PgServer {
    pub port: u16,
    dir: tempdir::Dir,
    bindir: PathBuf,
    running: bool,
}

fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return PathBuf::from(d);
    }
    let debian = Path::new("/usr/lib/postgresql");
    if let Ok(entries) = std::fs::read_dir(debian) {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("no /usr/lib/postgresql/*/bin/initdb and no pg_config: set PG_BINDIR");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgServer {
    /// initdb (trust auth, superuser `postgres`) and start.
    pub fn start() -> PgServer {
        let dir = std::env::temp_dir().join(super::unique("inv-pg"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let s = PgServer {
            port: super::free_port(),
            dir: tempdir::Dir(dir),
            bindir: bindir(),
            running: false,
        };
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&s.dir.0)
                .status()
                .expect("chown");
            assert!(st.success(), "chown to the postgres user failed");
        }
        s.run_tool(
            "initdb",
            &[
                "-D",
                &s.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
            ],
        );
        let mut s = s;
        s.start_again();
        s
    }

    fn data(&self) -> String {
        self.dir.0.join("data").display().to_string()
    }

    /// A PostgreSQL tool's command line, run as `postgres` when we are root.
    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let exe = self.bindir.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args);
        cmd
    }

    /// Runs a PostgreSQL tool; panics with its output when it fails.
    fn run_tool(&self, tool: &str, args: &[&str]) {
        let out = self
            .tool(tool, args)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    pub fn log(&self) -> PathBuf {
        self.dir.0.join("server.log")
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) on the same port and data directory, and waits until it
    /// accepts connections (after crash recovery, when the last stop was immediate).
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=60 -c shared_buffers=32MB -c fsync=on",
            self.port,
            self.dir.0.display()
        );
        let log = self.log().display().to_string();
        self.run_tool(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &opts,
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, nothing is flushed
    /// beyond what the WAL already holds, and the next start runs crash recovery. What a
    /// power cut or an OOM kill of the postmaster does, short of losing the disk.
    pub fn crash(&mut self) {
        self.run_tool(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        self.running = false;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self
                .tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
