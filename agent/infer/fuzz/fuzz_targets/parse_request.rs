//! `v2::parse_request` on arbitrary bodies: it must answer every one with a
//! request or an error, never a panic, and never allocate for a declared
//! shape beyond the limit.
#![no_main]

use basalt_infer::v2::{parse_request, parse_request_with, RequestLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let limits = RequestLimits { max_elements: 4096 };
    // As JSON alone, and as binary tensor data with the JSON length taken
    // from the first two bytes.
    let binary = body.split_first_chunk::<2>().map(|(n, rest)| {
        let n = u16::from_le_bytes(*n) as usize;
        parse_request_with(rest, Some(n), &limits)
    });
    for parsed in [Some(parse_request(body, &limits)), binary].into_iter().flatten() {
        let Ok(req) = parsed else { continue };
        let total: usize = req.inputs.iter().map(|i| i.data.len()).sum();
        assert!(total <= limits.max_elements);
        for input in &req.inputs {
            let n: u64 = input.shape.iter().product();
            assert_eq!(n, input.data.len() as u64);
            assert_eq!(input.data.datatype(), input.datatype);
        }
    }
});
