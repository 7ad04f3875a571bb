//! The client side of the admin socket, used by the CLI's commands (`cli/commands.rs`).

use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{AdminEvent, AdminRequest};

/// The client side: sends `request` to the node on `socket` and passes every event to
/// `on_event` until the final one, which it returns.
pub async fn call(
    socket: &Path,
    request: &AdminRequest,
    mut on_event: impl FnMut(&AdminEvent),
) -> anyhow::Result<AdminEvent> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "no shoal node is running on this data directory (cannot connect to {}); start one with `shoal node --data {}`",
            socket.display(),
            socket.parent().unwrap_or(Path::new(".")).display()
        )
    })?;
    let (reader, mut writer) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let event: AdminEvent =
            serde_json::from_str(&line).context("malformed answer from the node")?;
        if event.is_final() {
            return Ok(event);
        }
        on_event(&event);
    }
    anyhow::bail!("the node closed the connection without an answer")
}
