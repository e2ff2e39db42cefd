import { niceTicks, renderChart } from '../src';

describe('renderChart', () => {
  it('draws one polyline per line series, escapes text and places points inside the plot', () => {
    const svg = renderChart({
      title: 'A & B <test>',
      xLabel: 'x',
      yLabel: 'y',
      series: [
        {
          name: 'up',
          points: [
            { x: 0, y: 0 },
            { x: 10, y: 100 },
          ],
        },
        {
          name: 'down',
          points: [
            { x: 0, y: 100 },
            { x: 5, y: NaN },
            { x: 10, y: 0 },
          ],
        },
      ],
      width: 400,
      height: 300,
    });
    expect(svg).toContain('A &amp; B &lt;test&gt;');
    expect(svg.match(/<polyline/g)).toHaveLength(2);
    expect(svg.match(/<circle/g)).toHaveLength(4); // the NaN point is skipped
    for (const m of svg.matchAll(/cx="([\d.]+)" cy="([\d.]+)"/g)) {
      expect(Number(m[1])).toBeGreaterThanOrEqual(0);
      expect(Number(m[1])).toBeLessThanOrEqual(400);
      expect(Number(m[2])).toBeLessThanOrEqual(300);
    }
  });

  it('draws grouped bars with category labels, and a note when there is no data', () => {
    const svg = renderChart({
      kind: 'bar',
      title: 't',
      xLabel: 'model',
      yLabel: '%',
      xCategories: ['a', 'b', 'c'],
      series: [
        { name: 's1', points: [0, 1, 2].map((x) => ({ x, y: x + 1 })) },
        { name: 's2', points: [0, 1, 2].map((x) => ({ x, y: 2 })) },
      ],
    });
    expect(svg.match(/<rect x=[^>]*><title>/g)).toHaveLength(6);
    expect(svg).toContain('>b</text>');
    expect(renderChart({ title: 't', xLabel: 'x', yLabel: 'y', series: [] })).toContain('no data');
  });

  it('picks round tick steps', () => {
    expect(niceTicks(0, 100)).toEqual([0, 20, 40, 60, 80, 100]);
    expect(niceTicks(0.3, 1.1, 4)).toEqual([0.4, 0.6, 0.8, 1]);
  });
});
