//! NVML's opaque handles. Each is the address of one byte of a static table, and the byte's place
//! in the table says what it stands for: a board, a MIG device, a GPU instance, a compute instance
//! or an event set. Callers never dereference them; a pointer outside the table (or null) decodes
//! to nothing, so a forged or stale handle is refused with INVALID_ARGUMENT. No unsafe code: only
//! addresses are compared.

use std::sync::atomic::AtomicU8;

pub const MAX_GPUS: usize = 16;
/// GPU instance ids 0..16 per board.
pub const MAX_GI: usize = 16;
/// Compute instance ids 0..8 per GPU instance.
pub const MAX_CI: usize = 8;
pub const EVENT_SETS: usize = 32;

const DEV: usize = 0;
const MIG: usize = DEV + MAX_GPUS;
const GI: usize = MIG + MAX_GPUS * MAX_GI;
const CI: usize = GI + MAX_GPUS * MAX_GI;
const SET: usize = CI + MAX_GPUS * MAX_GI * MAX_CI;
const TOTAL: usize = SET + EVENT_SETS;

/// Interior mutability keeps every byte at its own address (never merged or promoted).
static TABLE: [AtomicU8; TOTAL] = [const { AtomicU8::new(0) }; TOTAL];

/// What a handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Device(u32),
    MigDevice(u32, u32),
    GpuInstance(u32, u32),
    ComputeInstance(u32, u32, u32),
    EventSet(usize),
}

fn at<T>(slot: usize) -> *mut T {
    std::ptr::from_ref(&TABLE[slot.min(TOTAL - 1)])
        .cast_mut()
        .cast()
}

pub fn device<T>(gpu: u32) -> *mut T {
    at(DEV + gpu as usize % MAX_GPUS)
}

pub fn mig_device<T>(gpu: u32, gi: u32) -> *mut T {
    at(MIG + (gpu as usize % MAX_GPUS) * MAX_GI + gi as usize % MAX_GI)
}

pub fn gpu_instance<T>(gpu: u32, gi: u32) -> *mut T {
    at(GI + (gpu as usize % MAX_GPUS) * MAX_GI + gi as usize % MAX_GI)
}

pub fn compute_instance<T>(gpu: u32, gi: u32, ci: u32) -> *mut T {
    at(CI
        + ((gpu as usize % MAX_GPUS) * MAX_GI + gi as usize % MAX_GI) * MAX_CI
        + ci as usize % MAX_CI)
}

pub fn event_set<T>(i: usize) -> *mut T {
    at(SET + i % EVENT_SETS)
}

/// What `p` stands for; `None` for null or any pointer this library did not hand out.
pub fn decode<T>(p: *mut T) -> Option<Handle> {
    let base = TABLE.as_ptr() as usize;
    let slot = (p as usize).checked_sub(base).filter(|s| *s < TOTAL)?;
    let u = |x: usize| x as u32;
    Some(match slot {
        s if s < MIG => Handle::Device(u(s - DEV)),
        s if s < GI => Handle::MigDevice(u((s - MIG) / MAX_GI), u((s - MIG) % MAX_GI)),
        s if s < CI => Handle::GpuInstance(u((s - GI) / MAX_GI), u((s - GI) % MAX_GI)),
        s if s < SET => {
            let k = s - CI;
            Handle::ComputeInstance(
                u(k / (MAX_GI * MAX_CI)),
                u((k / MAX_CI) % MAX_GI),
                u(k % MAX_CI),
            )
        }
        s => Handle::EventSet(s - SET),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handle_decodes_to_what_it_was_made_for() {
        for g in 0..MAX_GPUS as u32 {
            assert_eq!(decode(device::<u8>(g)), Some(Handle::Device(g)));
            for gi in 0..MAX_GI as u32 {
                assert_eq!(
                    decode(mig_device::<u8>(g, gi)),
                    Some(Handle::MigDevice(g, gi))
                );
                assert_eq!(
                    decode(gpu_instance::<u8>(g, gi)),
                    Some(Handle::GpuInstance(g, gi))
                );
                for ci in 0..MAX_CI as u32 {
                    assert_eq!(
                        decode(compute_instance::<u8>(g, gi, ci)),
                        Some(Handle::ComputeInstance(g, gi, ci))
                    );
                }
            }
        }
        assert_eq!(decode(event_set::<u8>(3)), Some(Handle::EventSet(3)));
    }

    #[test]
    fn null_and_foreign_pointers_decode_to_nothing() {
        assert_eq!(decode(std::ptr::null_mut::<u8>()), None);
        let mut x = 0u8;
        assert_eq!(decode(&mut x as *mut u8), None);
        let past = (TABLE.as_ptr() as usize + TOTAL) as *mut u8;
        assert_eq!(decode(past), None);
    }
}
