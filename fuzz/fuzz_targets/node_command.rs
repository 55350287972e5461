//! Node-channel payloads from Redis: parsing never panics, and what parses re-encodes to a
//! payload that parses to the same command.
#![no_main]
use freeim::protocol::NodeCommand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = NodeCommand::parse(data) {
        let again = NodeCommand::parse(command.encode().as_bytes()).expect("our own encoding parses");
        assert_eq!(again, command);
    }
});
