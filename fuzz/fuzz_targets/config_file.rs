//! `--config` files: parsing and validation never panic.
#![no_main]
use freeim::gateway::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(settings) = Settings::from_toml(text) {
        // TLS files and host names would touch the disk and DNS: keep to pure validation.
        if settings.tls_cert.is_none() && settings.tls_key.is_none() && settings.listen.is_none() {
            let _ = settings.resolve();
        }
    }
});
