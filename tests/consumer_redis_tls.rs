//! Redis over TLS (`rediss://`) with an ACL user from the URL: the consumer verifies the
//! server certificate (system roots, here `SSL_CERT_FILE`), logs in as the user, applies what
//! the user may touch, dead-letters NOPERM as `redis-permanent`, and never prints the password.

mod common;
mod consumer_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, unique};
use consumer_support::*;
use invalidator::wire::{headers, Op};
use redis::AsyncCommands;

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// rediss:// + ACL user: applied; a key outside the user's ACL goes to the DLQ (NOPERM).
async fn tls_and_acl_user_from_the_url() {
    let dir = std::env::temp_dir().join(unique("inv-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    // A test CA, and a server certificate for localhost signed by it.
    let script = "set -e
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=invalidator-test-ca \\
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out req.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf
        openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \\
            -extfile ext.cnf -out cert.pem";
    let ok = Command::new("sh")
        .args(["-c", script])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let port = free_port();
    let _server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--user", "admin", "on", ">adminpw", "~*", "&*", "+@all"])
            .args([
                "--user",
                "inv",
                "on",
                ">s3cret-pw",
                "~allowed:*",
                "~invalidator:*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server with TLS"),
    );
    // The test process trusts the test CA, as the consumer will.
    std::env::set_var("SSL_CERT_FILE", &ca);
    let admin_url = format!("rediss://admin:adminpw@localhost:{port}");
    let mut admin = Err(None);
    for _ in 0..100 {
        match redis::Client::open(admin_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(c) => {
                admin = Ok(c);
                break;
            }
            Err(e) => admin = Err(Some(e)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut admin = admin.expect("connecting over TLS as admin");
    let px = unique("allowed:k");
    let (item, forbidden) = (format!("{px}:item"), unique("other:k"));
    let _: () = admin.set(&item, "cached").await.unwrap();
    let _: () = admin.set(&forbidden, "cached").await.unwrap();

    let b = brokers();
    let (topic, group) = (unique("t"), unique("g"));
    create_topics(&b, &topic, 1).await;
    let p = producer(&b);
    produce_event(&p, &topic, &event(Op::Delete, &[&forbidden])).await;
    produce_event(&p, &topic, &event(Op::Delete, &[&item])).await;

    let mut child = tokio::process::Command::new(common::bin())
        .args([
            "consume",
            "--topic",
            &topic,
            "--group",
            &group,
            "-X",
            "fetch.wait.max.ms=5",
        ])
        .env("KAFKA_BROKERS", &b)
        .env(
            "REDIS_URL",
            format!("rediss://inv:s3cret-pw@localhost:{port}"),
        )
        .env("SSL_CERT_FILE", &ca)
        .env_remove("INVALIDATOR_KAFKA_OPTIONS")
        // stderr is read only after exit: a verbose RUST_LOG inherited from the caller
        // would fill the pipe and block the child.
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting invalidator consume");
    eventually(
        Duration::from_secs(60),
        "the allowed key deleted over TLS",
        || {
            let admin_url = admin_url.clone();
            let item = item.clone();
            async move {
                let mut c = common::redis_conn(&admin_url).await;
                let v: Option<String> = c.get(&item).await.unwrap();
                v.is_none()
            }
        },
    )
    .await;
    let dlq = format!("{topic}.dlq");
    eventually(
        Duration::from_secs(60),
        "the NOPERM record dead-lettered",
        || {
            let (b, dlq) = (b.clone(), dlq.clone());
            async move { record_count(&b, &dlq).await >= 1 }
        },
    )
    .await;
    let records = read_all(&b, &dlq).await;
    assert_eq!(
        header(&records[0], headers::DLQ_REASON).as_deref(),
        Some("redis-permanent")
    );
    let error = header(&records[0], headers::DLQ_ERROR).unwrap_or_default();
    assert!(error.contains("NOPERM"), "{error}");
    let v: Option<String> = admin.get(&forbidden).await.unwrap();
    assert_eq!(v.as_deref(), Some("cached"));

    let pid = child.id().expect("pid");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("rediss://inv:***@localhost"), "{stderr}");
    assert!(
        !stderr.contains("s3cret-pw"),
        "the password leaked: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
