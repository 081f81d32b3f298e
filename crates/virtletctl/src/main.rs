//! `virtletctl`: talks CRI to a virtlet daemon over its unix socket, the way `crictl` would, for
//! operators and scripts on nodes without crictl.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(version, about = "Command-line client for a virtlet node")]
struct Cli {
    /// The daemon's CRI socket.
    #[arg(
        long,
        env = "VIRTLET_CRI_SOCKET_PATH",
        default_value = "/run/virtlet.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime name and versions.
    Version,
    /// Pull an image; prints its reference with digest.
    Pull {
        image: String,
        /// Also print how long the pull took, in seconds, on stderr.
        #[arg(long)]
        time: bool,
    },
    /// List images, optionally only those a reference names.
    Images { filter: Option<String> },
    /// Show one image as JSON (with verbose info).
    Inspecti { image: String },
    /// Remove images.
    Rmi { images: Vec<String> },
    /// Image filesystem usage as JSON.
    Imagefsinfo,
}

async fn connect(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to virtlet at {}", socket.display()))
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..ImageSpec::default()
    })
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let channel = connect(&cli.socket).await?;
    let mut images = ImageServiceClient::new(channel.clone());
    match cli.command {
        Cmd::Version => {
            let v = RuntimeServiceClient::new(channel)
                .version(VersionRequest::default())
                .await
                .map_err(status_err)?
                .into_inner();
            println!(
                "RuntimeName: {}\nRuntimeVersion: {}\nRuntimeApiVersion: {}",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            );
        }
        Cmd::Pull { image, time } => {
            let start = Instant::now();
            let r = images
                .pull_image(PullImageRequest {
                    image: spec(&image),
                    ..PullImageRequest::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if time {
                eprintln!("{:.6}", start.elapsed().as_secs_f64());
            }
            println!("{}", r.image_ref);
        }
        Cmd::Images { filter } => {
            let list = images
                .list_images(ListImagesRequest {
                    filter: filter.map(|f| ImageFilter { image: spec(&f) }),
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .images;
            println!("{:<71} {:>12}  NAMES", "IMAGE ID", "SIZE");
            for i in list {
                println!("{:<71} {:>12}  {}", i.id, i.size, i.repo_tags.join(","));
            }
        }
        Cmd::Inspecti { image } => {
            let st = images
                .image_status(ImageStatusRequest {
                    image: spec(&image),
                    verbose: true,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let Some(img) = st.image else {
                anyhow::bail!("no such image: {image}");
            };
            let info: serde_json::Value = st
                .info
                .get("info")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let out = serde_json::json!({
                "id": img.id, "repoTags": img.repo_tags, "repoDigests": img.repo_digests,
                "size": img.size, "info": info,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Rmi { images: names } => {
            for name in names {
                images
                    .remove_image(RemoveImageRequest { image: spec(&name) })
                    .await
                    .map_err(status_err)?;
                println!("Deleted: {name}");
            }
        }
        Cmd::Imagefsinfo => {
            let fs = images
                .image_fs_info(ImageFsInfoRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            for u in fs.image_filesystems {
                let out = serde_json::json!({
                    "mountpoint": u.fs_id.map(|f| f.mountpoint).unwrap_or_default(),
                    "usedBytes": u.used_bytes.map(|v| v.value).unwrap_or_default(),
                    "inodesUsed": u.inodes_used.map(|v| v.value).unwrap_or_default(),
                    "timestamp": u.timestamp,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
    }
    Ok(())
}
