#!/usr/bin/env node
import { Command } from 'commander';
import { evalCommand } from './eval';
import { quantizeCommand } from './quantize';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { version } = require('../../package.json');

const program = new Command('lowbit')
  .description('post-training quantization of LLMs and what it costs them')
  .version(version)
  .showHelpAfterError();
program.addCommand(evalCommand());
program.addCommand(quantizeCommand());
program.parseAsync(process.argv);
