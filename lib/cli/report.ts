import { Command } from 'commander';
import { writeReport } from '../study/report';
import { fail } from './common';

export function reportCommand(): Command {
  return new Command('report')
    .description('regenerate report.md, results.csv and plots/ of a study folder from its stored results')
    .argument('<dir>', 'the study folder (--out of lowbit study)')
    .option('--no-png', 'plots as SVG only')
    .option('--quiet', 'print only where the files are')
    .action((dir: string, o: { png?: boolean; quiet?: boolean }) => {
      try {
        const rep = writeReport(dir, { png: o.png });
        for (const w of rep.warnings) process.stderr.write(`lowbit: warning: ${w}\n`);
        if (!o.quiet) process.stdout.write(rep.markdown + '\n');
        process.stdout.write(`wrote ${rep.reportPath}, ${rep.csvPath} and ${rep.plots.length} plots in ${rep.plotsDir}\n`);
      } catch (e) {
        fail(e);
      }
    });
}
