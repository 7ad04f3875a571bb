//! Completion-time statistics: quantiles and a downsampled CDF.

use serde::Serialize;

/// The distribution of completion times of the hosts that stayed; hosts that never
/// completed count as infinitely late.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    pub hosts: usize,
    pub completed: usize,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
    /// `(seconds, fraction of hosts done)`, at most 200 points (`CDF_POINTS_MAX`).
    pub cdf: Vec<(f64, f64)>,
}

/// Enough points for a smooth plot while keeping the JSON small.
const CDF_POINTS_MAX: usize = 200;

impl Distribution {
    pub fn of(times: &[Option<f64>]) -> Distribution {
        let mut done: Vec<f64> = times.iter().flatten().copied().collect();
        done.sort_by(f64::total_cmp);
        let hosts = times.len();
        let quantile = |q: f64| -> Option<f64> {
            if hosts == 0 {
                return None;
            }
            let rank = ((q * hosts as f64).ceil() as usize).clamp(1, hosts);
            done.get(rank - 1).copied()
        };
        let step = done.len().div_ceil(CDF_POINTS_MAX).max(1);
        let mut cdf: Vec<(f64, f64)> = done
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % step == 0 || i + 1 == done.len())
            .map(|(i, &t)| (t, (i + 1) as f64 / hosts as f64))
            .collect();
        cdf.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        Distribution {
            hosts,
            completed: done.len(),
            p50_s: quantile(0.5),
            p90_s: quantile(0.9),
            p99_s: quantile(0.99),
            max_s: quantile(1.0),
            cdf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank_and_count_the_incomplete() {
        let times: Vec<Option<f64>> = (1..=100).map(|i| Some(f64::from(i))).collect();
        let d = Distribution::of(&times);
        assert_eq!(
            (d.p50_s, d.p99_s, d.max_s),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        let mut late = times.clone();
        late[0] = None;
        let d = Distribution::of(&late);
        assert_eq!(d.completed, 99);
        assert_eq!(d.max_s, None);
        assert_eq!(d.p99_s, Some(100.0));
    }
}
