//! `spotkeeper key show`: the repository password, for escrow.

use std::io::IsTerminal;

use super::CommandError;
use crate::cli::{KeyArgs, KeyCommand};
use crate::config::Config;
use crate::repository::RepositoryError;

pub async fn run(config: &Config, args: &KeyArgs) -> Result<(), CommandError> {
    let KeyCommand::Show { yes } = args.command;
    let repository = config.repository.as_ref().ok_or_else(|| {
        CommandError::Usage("no [repository] section: format 1 has no password (and no encryption)".into())
    })?;
    if !yes && !std::io::stdout().is_terminal() {
        return Err(CommandError::Refused(
            "stdout is not a terminal: refusing to write the repository password into a pipe or file; pass --yes \
             if that is what you want"
                .into(),
        ));
    }
    let sdk = crate::aws::sdk_config(config.s3.region.as_deref()).await;
    let password = crate::format2::load_password(repository, &sdk)
        .await
        .map_err(RepositoryError::from)?;
    println!("{}", password.expose());
    Ok(())
}
