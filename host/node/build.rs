//! Links the addon against Node-API (the symbols Node provides at load time).
fn main() {
    napi_build::setup();
}
