//! End-to-end encryption set up with no human step: the account's cross-signing made once,
//! the device cross-signed, and with `recovery_passphrase` secret storage and key backup, so a
//! bot on a new device (a new pod, a lost store) recovers its identity and its rooms' keys.

use matrix_sdk::Client;
use matrix_sdk::encryption::recovery::RecoveryState;
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk_base::crypto::CollectStrategy;
use opsbot::transport::Link;

use super::config::{MatrixConfig, ShareKeys};

/// The SDK's encryption settings: room keys missing from the device are fetched from the
/// key backup when a message cannot be decrypted; cross-signing and backups are set up by
/// [`secure`], where their failures are seen.
pub(super) fn settings() -> EncryptionSettings {
    EncryptionSettings {
        auto_enable_cross_signing: false,
        backup_download_strategy: BackupDownloadStrategy::AfterDecryptionFailure,
        auto_enable_backups: false,
    }
}

/// The devices that get the keys of the bot's messages.
pub(super) fn strategy(policy: ShareKeys) -> CollectStrategy {
    match policy {
        ShareKeys::All => CollectStrategy::AllDevices,
        ShareKeys::Signed => CollectStrategy::IdentityBasedStrategy,
        ShareKeys::Verified => CollectStrategy::OnlyTrustedDevices,
    }
}

/// Makes the account's cross-signing if it has none (the homeserver may ask for the password
/// again), then with a recovery passphrase: sets up secret storage and key backup the first
/// time, or recovers them on a device that lacks them. Each step that fails is logged and in
/// the healing log; the bot goes on (plain rooms and the device's own keys still work).
pub(super) async fn secure(client: &Client, cfg: &MatrixConfig, link: &Link) {
    let enc = client.encryption();
    if let Err(e) = enc.bootstrap_cross_signing_if_needed(None).await {
        let retried = match (e.as_uiaa_response(), &cfg.password) {
            (Some(asked), Some(password)) => {
                let mut p = uiaa::Password::new(
                    uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(cfg.user.clone())),
                    password.expose().to_owned(),
                );
                p.session.clone_from(&asked.session);
                enc.bootstrap_cross_signing(Some(uiaa::AuthData::Password(p)))
                    .await
            }
            _ => Err(e),
        };
        if let Err(e) = retried {
            tracing::warn!(kind = "matrix", error = %e, "cannot set up cross-signing");
            link.heal_event("cross-signing", format!("cannot set up: {e}"));
        }
    }
    let Some(secret) = &cfg.recovery_passphrase else {
        return;
    };
    let recovery = enc.recovery();
    match enc.secret_storage().is_enabled().await {
        Ok(true) => {
            let whole = enc
                .cross_signing_status()
                .await
                .is_some_and(|s| s.is_complete())
                && enc.backups().are_enabled().await
                && recovery.state() != RecoveryState::Incomplete;
            if !whole {
                match recovery.recover(secret.expose()).await {
                    Ok(()) => {
                        let rooms = history(client).await;
                        link.heal_event(
                            "recover",
                            format!(
                                "the device took the account's keys from secret storage, \
                                 and the room keys of {rooms} encrypted room(s) from the backup"
                            ),
                        );
                    }
                    Err(e) => {
                        tracing::error!(kind = "matrix", error = %e, "cannot recover the account's keys");
                        link.heal_event("recover", format!("cannot recover: {e}"));
                    }
                }
            }
        }
        Ok(false) => match recovery.enable().with_passphrase(secret.expose()).await {
            Ok(_) => link.heal_event("recover", "secret storage and key backup set up"),
            Err(e) => {
                tracing::error!(kind = "matrix", error = %e, "cannot set up recovery");
                link.heal_event("recover", format!("cannot set up: {e}"));
            }
        },
        Err(e) => {
            tracing::warn!(kind = "matrix", error = %e, "cannot read secret storage's state");
            link.heal_event("recover", format!("cannot read its state: {e}"));
        }
    }
}

/// Fetches the room keys of every joined encrypted room from the key backup, so the
/// history a device before this one read is readable here too; answers how many rooms'
/// keys came.
async fn history(client: &Client) -> usize {
    let mut done = 0;
    for room in client.joined_rooms() {
        if !room
            .latest_encryption_state()
            .await
            .is_ok_and(|s| s.is_encrypted())
        {
            continue;
        }
        match client
            .encryption()
            .backups()
            .download_room_keys_for_room(room.room_id())
            .await
        {
            Ok(()) => done += 1,
            Err(e) => {
                tracing::warn!(kind = "matrix", room = %room.room_id(), error = %e, "cannot fetch the room's keys from the backup");
            }
        }
    }
    done
}

/// The encryption's state, for `!status`.
pub(super) async fn state(client: &Client, policy: ShareKeys) -> String {
    let enc = client.encryption();
    let signed = match enc.get_own_device().await {
        Ok(Some(d)) if d.is_cross_signed_by_owner() => "cross-signed",
        Ok(Some(_)) => "not cross-signed",
        _ => "no device keys",
    };
    let recovery = match enc.recovery().state() {
        RecoveryState::Enabled => "on",
        RecoveryState::Disabled => "off",
        RecoveryState::Incomplete => "incomplete",
        RecoveryState::Unknown => "unknown",
    };
    let backup = if enc.backups().are_enabled().await {
        "on"
    } else {
        "off"
    };
    format!(
        "encryption: device {signed}, recovery {recovery}, key backup {backup}, keys to {} devices",
        policy.name()
    )
}
