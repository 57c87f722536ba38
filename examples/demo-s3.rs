//! A local S3 server (s3s-fs) for `make demo` and `make bench`: serves a directory on
//! 127.0.0.1 with fixed test credentials.
//!
//! Usage: demo-s3 PORT ROOT [BUCKET...]   (buckets are created as directories under ROOT)

use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: demo-s3 PORT ROOT [BUCKET...]";
    let port: u16 = args.next().ok_or(usage)?.parse()?;
    let root = PathBuf::from(args.next().ok_or(usage)?);
    for bucket in args {
        std::fs::create_dir_all(root.join(bucket))?;
    }
    let access_key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into());
    let secret_key = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testsecret".into());
    let mut builder = s3s::service::S3ServiceBuilder::new(
        s3s_fs::FileSystem::new(&root).map_err(|e| format!("cannot serve {}: {e:?}", root.display()))?,
    );
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("demo-s3: serving {} on http://127.0.0.1:{port}", root.display());
    loop {
        let (socket, _) = listener.accept().await?;
        // s3s-fs leaves Nagle on; small GETs then wait ~40 ms for nothing.
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
