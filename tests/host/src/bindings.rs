//! The Spin interfaces the test host provides, bound from `wit/spin.wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "fermyon:spin/test-host",
    with: {
        "fermyon:spin/key-value.store": crate::kv::OpenStore,
    },
});

pub use fermyon::spin::key_value;
pub use fermyon::spin::variables;
