//! A private tansu broker for tests that must not share (or disturb) the suite's brokers:
//! sqlite storage in a temp dir of its own, on a free port, killed and removed on drop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A tansu broker of the test's own: sqlite storage in a temp dir, so a restart keeps every
/// record and committed offset.
pub struct Tansu {
    pub port: u16,
    dir: tempdir::Dir,
    child: Option<std::process::Child>,
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tansu_binary() -> PathBuf {
    let tools = std::env::var("INVALIDATOR_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/invalidator-tools")
        });
    let path = tools.join("tansu-0.6.0/bin/tansu");
    assert!(
        path.exists(),
        "{} missing: scripts/services.sh builds it",
        path.display()
    );
    path
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = std::env::temp_dir().join(super::unique("inv-tansu"));
        std::fs::create_dir_all(&dir).expect("tansu dir");
        let mut t = Tansu {
            port: super::free_port(),
            dir: tempdir::Dir(dir),
            child: None,
        };
        t.spawn();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("tansu.log"))
            .expect("tansu log");
        let child = std::process::Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir.0)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "tansu did not listen within 60s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and waits for it to exit (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Tansu {
    /// The broker's log (stdout and stderr of every start).
    pub fn log(&self) -> PathBuf {
        self.dir.0.join("tansu.log")
    }
}
