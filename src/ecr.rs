//! Pulling from Amazon ECR: an image whose registry is `<account>.dkr.ecr.<region>.amazonaws.com`
//! is pulled with a token from `ecr:GetAuthorizationToken`, using the instance role.

use aws_sdk_ecr::error::DisplayErrorContext;
use bollard::auth::DockerCredentials;

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("cannot get an ECR token for {registry}: {message}")]
    Token { registry: String, message: String },
}

/// The ECR registry host and its region, when `image` lives in ECR.
pub fn registry_of(image: &str) -> Option<(String, String)> {
    let (host, _) = image.split_once('/')?;
    let mut parts = host.split('.');
    let account = parts.next()?;
    let (dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?);
    let rest: Vec<&str> = parts.collect();
    let aws_domain = matches!(rest.as_slice(), ["amazonaws", "com"] | ["amazonaws", "com", "cn"]);
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && dkr == "dkr" && ecr == "ecr" && aws_domain)
        .then(|| (host.to_string(), region.to_string()))
}

/// Docker credentials for `registry` from ECR's `AWS:<password>` token.
pub async fn credentials(registry: &str, region: &str) -> Result<DockerCredentials, EcrError> {
    let error = |message: String| EcrError::Token {
        registry: registry.to_string(),
        message,
    };
    // The registry's own region, whatever the instance's.
    let config = crate::aws::sdk_config(Some(region)).await;
    let client = aws_sdk_ecr::Client::new(&config);
    let output = client
        .get_authorization_token()
        .send()
        .await
        .map_err(|e| error(DisplayErrorContext(&e).to_string()))?;
    let token = output
        .authorization_data()
        .first()
        .and_then(|d| d.authorization_token())
        .ok_or_else(|| error("ECR returned no authorization data".into()))?;
    let (username, password) =
        decode_token(token).ok_or_else(|| error("the ECR token is not base64 of user:password".into()))?;
    Ok(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: Some(format!("https://{registry}")),
        ..Default::default()
    })
}

/// `base64("AWS:<password>")` -> ("AWS", password).
fn decode_token(token: &str) -> Option<(String, String)> {
    let bytes = aws_smithy_types::base64::decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ecr_registries_only() {
        assert_eq!(
            registry_of("123456789012.dkr.ecr.eu-west-1.amazonaws.com/openclaw:2026.9.5"),
            Some((
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com".into(),
                "eu-west-1".into()
            ))
        );
        assert!(registry_of("ghcr.io/openclaw/openclaw:2026.9.5").is_none());
        assert!(registry_of("openclaw:latest").is_none());
        assert!(registry_of("12345.dkr.ecr.eu-west-1.amazonaws.com/x").is_none());
        assert!(registry_of("123456789012.dkr.ecr.eu-west-1.example.com/x").is_none());
    }

    #[test]
    fn decodes_the_token() {
        let token = aws_smithy_types::base64::encode("AWS:secret-password");
        assert_eq!(decode_token(&token), Some(("AWS".into(), "secret-password".into())));
        assert_eq!(decode_token("!!"), None);
    }
}
