//! Placeholder replaced by the live view.
pub async fn run(_rx: tokio::sync::mpsc::Receiver<crate::events::Record>) -> anyhow::Result<()> {
    Ok(())
}
