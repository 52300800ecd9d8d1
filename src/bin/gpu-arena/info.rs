//! `gpu-arena info`: the backend, every device it sees (name, memory,
//! granularity, virtual memory management support, peers), the reservation
//! an arena obtains on the chosen device (and any fallback), and the
//! configuration in force.

use gpu_arena::driver::{Driver, SystemDriver};
use gpu_arena::{Arena, ArenaConfig, Kind};

use crate::table::Table;
use crate::{AnyResult, BackendArg, Backends, fmt_bytes};

/// What a CUDA device adds to the report.
#[derive(serde::Serialize)]
struct CudaInfo {
    name: String,
    driver_version: i32,
    host_memory_location: Option<&'static str>,
}

/// One device as the backend sees it.
#[derive(serde::Serialize)]
struct DeviceInfo {
    ordinal: u32,
    name: String,
    /// Whether the backend opened it (virtual memory management usable).
    vmm: bool,
    /// Why it could not be opened.
    error: Option<String>,
    memory: Option<u64>,
    granularity: Option<usize>,
    recommended_granularity: Option<usize>,
    shareable_handles: Option<bool>,
    /// Devices whose memory this one can read and write (CUDA:
    /// `cuDeviceCanAccessPeer`); `None` where the backend does not say.
    peers: Option<Vec<u32>>,
}

#[derive(serde::Serialize)]
struct Reservation {
    base: gpu_arena::DevicePtr,
    size: u64,
    /// The size obtained where the configured one was refused.
    fallback: Option<u64>,
}

#[derive(serde::Serialize)]
struct Info {
    note: String,
    capabilities: gpu_arena::driver::Capabilities,
    cuda: Option<CudaInfo>,
    devices: Vec<DeviceInfo>,
    reservation: Reservation,
    regions: Vec<gpu_arena::stats::RegionReport>,
    config: ArenaConfig,
}

#[cfg(feature = "cuda")]
fn cuda_info(d: &SystemDriver) -> Option<CudaInfo> {
    match d {
        SystemDriver::Cuda(c) => Some(CudaInfo {
            name: crate::cuda::Cu::new(c)
                .map(|cu| cu.device_name())
                .unwrap_or_else(|e| format!("unknown ({e})")),
            driver_version: c.driver_version(),
            host_memory_location: c.host_kind().map(|k| k.name()),
        }),
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_info(_: &SystemDriver) -> Option<CudaInfo> {
    None
}

/// The name of device `ordinal` and the devices it can access as peers.
#[cfg(feature = "cuda")]
fn describe(loaded: &SystemDriver, ordinal: u32, count: u32) -> (String, Option<Vec<u32>>) {
    match loaded {
        SystemDriver::Cuda(c) => {
            let peers = (0..count)
                .filter(|&p| p != ordinal)
                .map(|p| crate::cuda::can_access_peer(c, ordinal, p).map(|ok| (p, ok)))
                .collect::<Option<Vec<_>>>()
                .map(|v| {
                    v.into_iter()
                        .filter(|&(_, ok)| ok)
                        .map(|(p, _)| p)
                        .collect()
                });
            (crate::cuda::device_name(c, ordinal), peers)
        }
        _ => describe_other(loaded, ordinal),
    }
}

#[cfg(not(feature = "cuda"))]
fn describe(loaded: &SystemDriver, ordinal: u32, _count: u32) -> (String, Option<Vec<u32>>) {
    describe_other(loaded, ordinal)
}

fn describe_other(loaded: &SystemDriver, ordinal: u32) -> (String, Option<Vec<u32>>) {
    let backend = loaded.capabilities().backend;
    let name = if backend == gpu_arena::Backend::Host {
        format!("emulated device {ordinal} (host memory)")
    } else {
        format!("{backend} device {ordinal}")
    };
    (name, None)
}

/// Every device of the backend `driver` belongs to: `driver` describes
/// `device`; the others are opened one at a time (and closed again).
fn devices(backends: &Backends, driver: &SystemDriver, device: u32) -> Vec<DeviceInfo> {
    let count = driver.capabilities().device_count;
    (0..count)
        .map(|i| {
            let (name, peers) = describe(driver, i, count);
            let opened = if i == device {
                Ok(None)
            } else {
                SystemDriver::open(backends.select(), i, |_| {}).map(Some)
            };
            match opened {
                Ok(other) => {
                    let caps = *other.as_ref().unwrap_or(driver).capabilities();
                    DeviceInfo {
                        ordinal: i,
                        name,
                        vmm: true,
                        error: None,
                        memory: Some(caps.device_memory),
                        granularity: Some(caps.granularity),
                        recommended_granularity: Some(caps.recommended_granularity),
                        shareable_handles: Some(caps.shareable_handles),
                        peers,
                    }
                }
                Err(e) => DeviceInfo {
                    ordinal: i,
                    name,
                    vmm: false,
                    error: Some(e.to_string()),
                    memory: None,
                    granularity: None,
                    recommended_granularity: None,
                    shareable_handles: None,
                    peers,
                },
            }
        })
        .collect()
}

/// Runs `info`.
pub fn run(backend: BackendArg, device: u32, json: bool) -> AnyResult<()> {
    let (backends, driver) = Backends::open(backend, device)?;
    let caps = *driver.capabilities();
    let cuda = cuda_info(&driver);
    let devices = devices(&backends, &driver, device);
    let config = ArenaConfig::default();
    let arena = Arena::new(driver, Kind::Device(device), config)?;
    let (base, size) = arena.reservation();
    let info = Info {
        note: backends.note,
        capabilities: caps,
        cuda,
        devices,
        reservation: Reservation {
            base,
            size,
            fallback: arena.reservation_fallback(),
        },
        regions: arena.snapshot().regions,
        config: *arena.config(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut t = Table::new(["gpu-arena info", ""]).left();
    t.row(["backend", caps.backend.name()]);
    if let Some(c) = &info.cuda {
        t.row(["device".to_string(), format!("{device}: {}", c.name)]);
        t.row([
            "CUDA driver".to_string(),
            format!(
                "{}.{} ({})",
                c.driver_version / 1000,
                c.driver_version % 1000 / 10,
                c.driver_version
            ),
        ]);
    }
    t.row(["devices".to_string(), caps.device_count.to_string()]);
    for d in &info.devices {
        let what = match (&d.error, d.memory, d.granularity, d.recommended_granularity) {
            (None, Some(m), Some(g), Some(r)) => {
                let peers = match &d.peers {
                    Some(p) if p.is_empty() => ", peers: none".to_string(),
                    Some(p) => format!(
                        ", peers: {}",
                        p.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                    ),
                    None => String::new(),
                };
                format!(
                    "{}, {}, granularity {} (recommended {}), VMM yes, shareable handles {}{peers}",
                    d.name,
                    fmt_bytes(m),
                    fmt_bytes(g as u64),
                    fmt_bytes(r as u64),
                    yes(d.shareable_handles == Some(true)),
                )
            }
            (e, ..) => format!(
                "{}, VMM no: {}",
                d.name,
                e.as_deref().unwrap_or("not opened")
            ),
        };
        t.row([format!("  device {}", d.ordinal), what]);
    }
    t.row([
        "granularity".to_string(),
        format!(
            "{} (recommended {})",
            fmt_bytes(caps.granularity as u64),
            fmt_bytes(caps.recommended_granularity as u64)
        ),
    ]);
    let memory = if caps.backend == gpu_arena::Backend::Host {
        format!(
            "{} (emulated capacity: half the RAM)",
            fmt_bytes(caps.device_memory)
        )
    } else {
        fmt_bytes(caps.device_memory)
    };
    t.row(["device memory".to_string(), memory]);
    t.row([
        "largest reservation".to_string(),
        fmt_bytes(caps.max_reservation),
    ]);
    let fallback = match info.reservation.fallback {
        Some(s) => format!(
            ", fell back to {} (the configured size was refused)",
            fmt_bytes(s)
        ),
        None => String::new(),
    };
    t.row([
        "reservation".to_string(),
        format!("{} at {base:#x}{fallback}", fmt_bytes(size)),
    ]);
    for r in &info.regions {
        t.row([
            format!("  region {}", r.name),
            format!("{} at +{:#x}", fmt_bytes(r.size), r.offset),
        ]);
    }
    t.row(["CPU reads device memory", yes(caps.cpu_reads_device_memory)]);
    let host = match &info.cuda {
        Some(CudaInfo {
            host_memory_location: Some(k),
            ..
        }) => format!("yes ({k})"),
        _ => yes(caps.host_memory).to_string(),
    };
    t.row(["pinned host memory".to_string(), host]);
    t.row(["peer access", yes(caps.peer_access)]);
    t.row(["shareable handles", yes(caps.shareable_handles)]);
    let c = &info.config;
    let auto = |v: u64| {
        if v == 0 {
            format!(
                "0 (auto: {}x device memory)",
                gpu_arena::arena::AUTO_RESERVATION_FACTOR
            )
        } else {
            fmt_bytes(v)
        }
    };
    t.row(["config.reservation".to_string(), auto(c.reservation)]);
    t.row([
        "config.min_reservation".to_string(),
        fmt_bytes(c.min_reservation),
    ]);
    t.row([
        "config.blocks_fraction".to_string(),
        c.blocks_fraction.to_string(),
    ]);
    t.row(["config.quantum".to_string(), fmt_bytes(c.quantum)]);
    t.row([
        "config.commit.max_run".to_string(),
        fmt_bytes(c.commit.max_run),
    ]);
    t.row([
        "config.commit.decay_ms".to_string(),
        c.commit.decay_ms.to_string(),
    ]);
    t.row([
        "config.commit.stitch_min".to_string(),
        fmt_bytes(c.commit.stitch_min),
    ]);
    t.row([
        "config.commit.growth_ahead".to_string(),
        c.commit.growth_ahead.to_string(),
    ]);
    t.row([
        "config.commit.bulk_streak".to_string(),
        c.commit.bulk_streak.to_string(),
    ]);
    t.row([
        "config.commit.range_order".to_string(),
        c.commit.range_order.name().to_string(),
    ]);
    t.row([
        "config.commit.stitch_repair".to_string(),
        c.commit.stitch_repair.to_string(),
    ]);
    t.row(["config.commit.park".to_string(), c.commit.park.to_string()]);
    let limit = if c.commit.limit == u64::MAX {
        "none (device memory)".to_string()
    } else {
        fmt_bytes(c.commit.limit)
    };
    t.row(["config.commit.limit".to_string(), limit]);
    print!("{}", t.render());
    println!("config (JSON): {}", serde_json::to_string(&info.config)?);
    Ok(())
}
