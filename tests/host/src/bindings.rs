//! The Spin interfaces the test host provides, bound from `wit/spin.wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "fermyon:spin/test-host",
    with: {
        "fermyon:spin/key-value.store": crate::kv::OpenStore,
        "wasi:keyvalue/store.bucket": crate::wasi_kv::Bucket,
        "wasi:keyvalue/atomics.cas": crate::wasi_kv::Cas,
    },
});

pub use fermyon::spin::key_value;
pub use fermyon::spin::variables;
pub use wasi::keyvalue as wasi_keyvalue;
