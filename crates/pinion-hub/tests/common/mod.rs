//! What the hub's integration tests share.

use pinion_hub::HubConfig;

/// The embedded defaults, with `PINION_FANOUT_SEND` (alone) taken from
/// the environment: `PINION_FANOUT_SEND=writev cargo test -p pinion-hub`
/// runs every test on the other send path.
pub fn base_config() -> HubConfig {
    let mut c = HubConfig::default();
    c.apply_env(|k| {
        (k == "PINION_FANOUT_SEND")
            .then(|| std::env::var(k).ok())
            .flatten()
    })
    .expect("PINION_FANOUT_SEND is writev or io_uring");
    c
}
