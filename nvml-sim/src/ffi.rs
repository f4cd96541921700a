//! The only code that touches caller memory. Every function checks for null first; beyond that it
//! relies on NVML's contract, which every client of a real driver honours too: an out-pointer
//! points at one writable value of its type, a buffer with a count holds `*count` elements, and a
//! string buffer holds `length` bytes.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char};
use std::os::raw::c_uint;

use super::{INSUFFICIENT_SIZE, INVALID_ARGUMENT, Ret};

/// Writes `v` through an out-pointer.
pub fn put<T>(p: *mut T, v: T) -> Result<(), Ret> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: `p` is non-null and, by NVML's contract, points at one writable `T`; `write` does
    // not read or drop the old value, so uninitialised memory is fine too.
    unsafe { p.write(v) };
    Ok(())
}

/// Reads a value the caller passed in.
pub fn get<T: Copy>(p: *const T) -> Result<T, Ret> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-null and, by NVML's contract, an initialised `T` the caller owns for the call;
    // `read_unaligned` makes no alignment assumption.
    Ok(unsafe { p.read_unaligned() })
}

/// The `version` field that leads a versioned NVML struct.
pub fn read_version<T>(p: *mut T) -> Result<c_uint, Ret> {
    get(p.cast::<c_uint>().cast_const())
}

/// Reads a NUL-terminated UTF-8 string argument.
pub fn read_cstr<'a>(p: *const c_char) -> Result<&'a str, Ret> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-null and, by NVML's contract, a NUL-terminated string alive for the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| INVALID_ARGUMENT)
}

/// Writes `s` and its NUL into a buffer of `length` bytes; INSUFFICIENT_SIZE when it does not fit.
pub fn write_cstr(buf: *mut c_char, length: c_uint, s: &str) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > length as usize {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` is non-null and holds `length` bytes (NVML's contract), and we write
    // `bytes.len() + 1 <= length` of them; the source is a live slice that does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// Fills a caller's buffer of `*count` elements with `items`, setting `*count` to how many there
/// are. A null buffer or a short one answers INSUFFICIENT_SIZE with the needed count (or SUCCESS
/// when there is nothing to give), as NVML's list queries do.
pub fn fill<T: Copy>(buf: *mut T, count: *mut c_uint, items: &[T]) -> Result<(), Ret> {
    let have = get(count.cast_const())?;
    let need = items.len() as c_uint;
    put(count, need)?;
    if need == 0 {
        return Ok(());
    }
    if buf.is_null() || have < need {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` is non-null and holds `have >= need` elements (NVML's contract for a buffer
    // with a count); the source is a live slice of `need` elements that does not overlap it.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    Ok(())
}

/// Fills a buffer whose size NVML defines by the profile (`most` elements, no count going in),
/// setting `*count` to how many were written.
pub fn fill_unsized<T: Copy>(
    buf: *mut T,
    count: *mut c_uint,
    items: &[T],
    most: u32,
) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let n = items.len().min(most as usize);
    put(count, n as c_uint)?;
    // SAFETY: `buf` is non-null and holds `most >= n` elements (NVML's contract: room for the
    // profile's instance count); the source is a live slice that does not overlap it.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf, n) };
    Ok(())
}
