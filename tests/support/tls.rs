//! Certificates for TLS tests, made by `openssl` in a temporary directory: a
//! private CA and a server certificate it signed for `localhost` and
//! `127.0.0.1`, as a managed Redis would present.

use std::path::PathBuf;
use std::process::Command;

pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    pub fn make() -> Self {
        let dir =
            std::env::temp_dir().join(format!("presence-tls-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("san.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is installed (run .ci/run, or apt-get install openssl)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=presence test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The CA certificate, PEM: what a client must trust.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).unwrap()
    }

    /// `redis-server` arguments: TLS only on `port`, the plain port off, and
    /// one ACL user `user` with password `password` (the default user off).
    pub fn server_args(&self, port: u16, user: &str, password: &str) -> Vec<String> {
        let mut args: Vec<String> =
            ["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"].map(str::to_owned).to_vec();
        for (flag, file) in
            [("--tls-cert-file", "server.crt"), ("--tls-key-file", "server.key"), ("--tls-ca-cert-file", "ca.crt")]
        {
            args.push(flag.to_owned());
            args.push(self.path(file));
        }
        args.extend(["--user", user, "on", &format!(">{password}"), "~*", "&*", "+@all"].map(str::to_owned));
        args.extend(["--user", "default", "off"].map(str::to_owned));
        args
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
