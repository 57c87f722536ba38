//! `spotkeeper init [--create-password]`: create the format-2 repository.

use std::io::Read;

use super::CommandError;
use crate::cli::InitArgs;
use crate::config::{Config, PasswordSource};
use crate::format2::{self, Engine, PasswordError};
use crate::repository::RepositoryError;
use crate::store::Store;

pub async fn run(config: &Config, args: &InitArgs) -> Result<(), CommandError> {
    let repository = config.repository.as_ref().ok_or_else(|| {
        CommandError::Usage(
            "`spotkeeper init` creates format 2's repository, whose password [repository] names: add \
             `password_ssm = \"/NAME\"` (or `password_file`) under [repository] first"
                .into(),
        )
    })?;
    let sdk = crate::aws::sdk_config(config.s3.region.as_deref()).await;
    let store = Store::connect(&config.s3, &sdk);
    // Before anything is created: a repository, or anything at all, under repo/ is refused.
    let prefix = format!("{}/", format2::backend::REPO_DIR);
    let present = store.list(&prefix).await.map_err(RepositoryError::from)?;
    if !present.is_empty() {
        return Err(CommandError::Refused(format!(
            "{} is not empty ({} objects{}): refusing to create a repository over it",
            store.url(&prefix),
            present.len(),
            if present.iter().any(|o| o.key.ends_with("/config")) {
                ", a repository exists"
            } else {
                ""
            }
        )));
    }
    if args.create_password {
        let PasswordSource::Ssm(name) = &repository.password else {
            return Err(CommandError::Usage(
                "--create-password creates an SSM parameter, but [repository] names a password file: create it \
                 yourself (`head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE; chmod 600 FILE`)"
                    .into(),
            ));
        };
        create_parameter(&format2::ssm_client(repository, &sdk), name).await?;
        println!("created SSM SecureString {name} with 32 random bytes (hex)");
    }
    let password = format2::load_password(repository, &sdk)
        .await
        .map_err(RepositoryError::from)?;
    let engine = Engine::new(store, password, None);
    engine.init().await.map_err(RepositoryError::from)?;
    println!(
        "created the format-2 repository {}\n\
         Losing the password loses every backup: escrow it now with `spotkeeper key show` (a password manager, a \
         safe).",
        engine.location()
    );
    Ok(())
}

/// Creates the SecureString `name` (the account's aws/ssm KMS key), never overwriting one: an
/// existing parameter may be the password of existing backups.
async fn create_parameter(client: &aws_sdk_ssm::Client, name: &str) -> Result<(), CommandError> {
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random))?;
    let value: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let result = client
        .put_parameter()
        .name(name)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .value(value)
        .overwrite(false)
        .description(
            "spotkeeper repository password: losing it loses every backup; escrow it with `spotkeeper key show`",
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_already_exists()) => {
            Err(CommandError::Refused(format!(
                "SSM parameter {name} exists already; refusing to overwrite it (it may be the password of existing \
                 backups). Run `spotkeeper init` without --create-password to use it"
            )))
        }
        Err(e) => {
            let problem = crate::store::problem::classify(&crate::store::problem::failure_of(&e));
            Err(RepositoryError::from(PasswordError::Ssm {
                name: name.to_string(),
                message: crate::secrets::ssm_message(&problem, name),
                transient: problem.is_transient(),
            })
            .into())
        }
    }
}
