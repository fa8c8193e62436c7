//! Logging from the initrd, before journald exists: lines go to the kernel
//! log, which shows them on the console and which journald later imports.

use std::fs::OpenOptions;
use std::io::Write;

/// Kernel log levels used by the initrd.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

pub fn log(level: Level, msg: &str) {
    let line = format!("<{}>basalt-initrd: {msg}\n", level as u8);
    match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(_) => eprintln!("basalt-initrd: {msg}"),
    }
}

#[macro_export]
macro_rules! kinfo { ($($t:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Info, &format!($($t)*)) } }
#[macro_export]
macro_rules! knotice { ($($t:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Notice, &format!($($t)*)) } }
#[macro_export]
macro_rules! kwarn { ($($t:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Warning, &format!($($t)*)) } }
#[macro_export]
macro_rules! kerr { ($($t:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Err, &format!($($t)*)) } }
