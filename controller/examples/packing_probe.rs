//! Temporary probe while developing the replay.
use greenslice_controller::placement::{openb, replay};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let trace = args.get(1).cloned().unwrap_or("default".into());
    let pols: Vec<String> = args
        .get(2)
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or(vec!["best-fit".into()]);
    let seeds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let variant: u8 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);

    let v2: u8 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(0);

    let nodes = openb::load_nodes(Path::new(
        "../shared/data/openb/openb_node_list_gpu_node.csv",
    ))?;
    let tasks = openb::load_tasks(Path::new(&format!(
        "../shared/data/openb/openb_pod_list_{trace}.csv"
    )))?;
    let p = replay::prepare(&nodes, &tasks);
    eprintln!(
        "classes {} total {}",
        p.workload().classes().len(),
        p.workload().total()
    );
    for pol in pols {
        let k = greenslice_controller::placement::PolicyKind::from_name(&pol).unwrap();
        let mut u100 = vec![];
        let mut u130 = vec![];
        let mut wall = vec![];
        for s in 42..42 + seeds {
            let r = replay::replay(&p, k, s, 130);
            u100.push(r.unallocated_at(100).unwrap_or(f64::NAN));
            u130.push(r.unallocated_at(130).unwrap_or(f64::NAN));
            wall.push(r.wall.as_secs_f64());
            if s == 42 {
                eprintln!(
                    "{pol} seed42 med {}ns p99 {}ns wall {:.3}s placed {} failed {}",
                    r.decision_median_ns,
                    r.decision_p99_ns,
                    r.wall.as_secs_f64(),
                    r.placed,
                    r.failed
                );
            }
        }
        let ms = |v: &Vec<f64>| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt();
            format!("{m:.2}+-{sd:.2}")
        };
        println!(
            "{trace} {pol} v{variant}/{v2}: u100 {} u130 {} wall {:.3}",
            ms(&u100),
            ms(&u130),
            wall.iter().sum::<f64>() / wall.len() as f64
        );
    }
    Ok(())
}
