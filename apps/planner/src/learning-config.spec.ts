import { ConfigError } from '@tandem/service-kit';
import { DEFAULT_CALIBRATION } from './calibration';
import { loadConfig } from './config';

describe('planner configuration of learning from outcomes', () => {
  it('defaults to the calibrator defaults', () => {
    const c = loadConfig({ MODEL_DIR: '/m' });
    expect({
      learn: c.PLANNER_LEARN,
      target: c.PLANNER_SLO_TARGET,
      relaxMargin: c.PLANNER_SLO_RELAX_MARGIN,
      halfLife: c.PLANNER_OUTCOME_HALF_LIFE,
      minOutcomes: c.PLANNER_OUTCOME_MIN,
      step: c.PLANNER_SAFETY_STEP,
      floor: c.PLANNER_SAFETY_FLOOR,
      dwellMs: c.PLANNER_SAFETY_DWELL_MS,
      relaxDwellMs: c.PLANNER_SAFETY_RELAX_MS,
      materialChange: c.PLANNER_CALIBRATION_CHANGE,
      byKind: c.PLANNER_CALIBRATE_BY_KIND,
    }).toEqual(DEFAULT_CALIBRATION);
  });

  it('lists every bad setting with its rule and value', () => {
    let err: unknown;
    try {
      loadConfig({ MODEL_DIR: '/m', PLANNER_SLO_TARGET: '1.5', PLANNER_SAFETY_STEP: '1', PLANNER_LEARN: 'maybe' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      "PLANNER_LEARN must be true or false, given 'maybe'",
      "PLANNER_SLO_TARGET must be a number in 0.01..1, given '1.5'",
      "PLANNER_SAFETY_STEP must be a number in 0.1..0.99, given '1'",
    ]);
  });

  it('refuses a target and relax margin that would never let a tightened class relax', () => {
    expect(() => loadConfig({ MODEL_DIR: '/m', PLANNER_SLO_TARGET: '0.98' })).toThrow(
      'PLANNER_SLO_TARGET + PLANNER_SLO_RELAX_MARGIN must be at most 1 (else a tightened class never relaxes), given 0.98 + 0.05',
    );
    expect(loadConfig({ MODEL_DIR: '/m', PLANNER_SLO_TARGET: '0.98', PLANNER_SLO_RELAX_MARGIN: '0.02' }).PLANNER_SLO_TARGET).toBe(0.98);
  });
});
