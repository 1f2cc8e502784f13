#!/usr/bin/env node
import { Command } from 'commander';
import { evalCommand } from './eval';
import { quantizeCommand } from './quantize';
import { reportCommand } from './report';
import { studyCommand } from './study';
import { workerCommand } from './worker';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { version } = require('../../package.json');

const program = new Command('lowbit')
  .description('post-training quantization of LLMs and what it costs them')
  .version(version)
  .showHelpAfterError();
program.addCommand(evalCommand());
program.addCommand(quantizeCommand());
program.addCommand(studyCommand());
program.addCommand(reportCommand());
program.addCommand(workerCommand());
program.parseAsync(process.argv);
