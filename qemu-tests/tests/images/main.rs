//! One test binary for everything that builds images, so that each default
//! image is built once per run and shared by the tests that boot or inspect it.

mod boot;
mod build;
mod infer;
mod iso;
mod mesh;
mod pi;
mod power_cut;
mod provision;
mod update;
